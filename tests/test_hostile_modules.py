"""Hand-made module files: settings that are not plain values and headers with odd fields are
refused or shown clearly, never raised as something else."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from gen_core import hypernetwork as H
from tests.test_hypernetwork import a1111_file


def resaved(data: bytes, **changes) -> bytes:
    raw = torch.load(io.BytesIO(data), weights_only=True)
    raw.update(changes)
    buf = io.BytesIO()
    torch.save(raw, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"step": torch.arange(3)}, "`step` setting holds 3 values"),
        ({"use_dropout": torch.ones(2)}, "`use_dropout` setting holds 2 values"),
        ({"layer_structure": [1, torch.tensor(2.0), 1]}, "`layer_structure` setting is not a list of numbers"),
        ({"sd_checkpoint_name": {"a": 1}}, "`sd_checkpoint_name` setting is a dict"),
    ],
)
def test_settings_that_are_not_plain_values_are_refused(changes, message):
    data, _ = a1111_file((32,))
    with pytest.raises(H.HypernetworkError, match=message):
        H.load_bytes(resaved(data, **changes), "style.pt")


def test_one_element_tensors_are_numbers():
    data, _ = a1111_file((32,))
    hn = H.load_bytes(resaved(data, step=torch.tensor(77)), "style.pt")
    assert hn.meta["step"] == 77 and isinstance(hn.meta["step"], int)


def test_state_dicts_with_foreign_keys_are_refused():
    data, _ = a1111_file((32,))
    raw = torch.load(io.BytesIO(data), weights_only=True)
    raw[32][0][7] = torch.ones(1)  # a key that is not a string
    buf = io.BytesIO()
    torch.save(raw, buf)
    with pytest.raises(H.HypernetworkError, match="do not match"):
        H.load_bytes(buf.getvalue(), "x.pt")


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({}, []),
        ({"training": "lots"}, []),
        ({"training": {"images": 3}}, ["Trained on 3 images for ? steps (buckets ?; final loss ?)"]),
        ({"training": {"images": 2, "steps": 8, "buckets": {"64x64": 2}, "final_loss": 0.5}, "base_model": "sd15"},
         ["Base model: sd15", "Trained on 2 images for 8 steps (buckets 64x64×2; final loss 0.5000)"]),
        ({"step": 1234, "base_model": ["x"]}, ["Imported from A1111 (step 1234)"]),
    ],
)  # fmt: skip
def test_origin_lines_from_any_header(meta, expected):
    assert H.describe_origin(meta) == expected


@pytest.mark.parametrize("pickled", [b"\x80\x02h\x3a.", b"\x80\x02q\x00."])  # a memo key that is not there; a damaged zip
def test_a_pt_file_whose_unpickling_fails_in_any_way_is_a_clear_refusal(pickled):
    data, _ = a1111_file((32,))
    original = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in original.infolist():
            out.writestr(info, pickled if info.filename.endswith("data.pkl") else original.read(info))
    with pytest.raises(H.HypernetworkError, match="not a readable PyTorch .pt file"):
        H.load_bytes(buf.getvalue(), "x.pt")

"""Untrusted archives: bombs and damage are refused before anything is unpacked."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from gen_core import hypernetwork as H
from gen_core.archives import (
    ArchiveError,
    ArchiveLimits,
    check_torch_archive,
    declared_entries,
    open_zip,
    read_member,
)

LIMITS = ArchiveLimits(max_members=100, max_member_bytes=2**20, max_total_bytes=4 * 2**20, max_ratio=50)


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def deflated(archive: bytes) -> bytes:
    """The same zip with every member deflated (what a bomb of zeros looks like)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return zipped({i.filename: z.read(i) for i in z.infolist()})


def pt_bomb(n_floats: int = 4 * 2**20) -> bytes:
    """A torch.save zip whose storage of zeros is deflated: tiny on disk, large once loaded."""
    buf = io.BytesIO()
    torch.save({"name": "bomb", 32: [{"x": torch.zeros(n_floats)}, {}]}, buf)
    return deflated(buf.getvalue())


def test_a_pt_bomb_is_refused_before_torch_load():
    data = pt_bomb()
    assert len(data) < 64 * 1024  # 16 MiB of zeros
    with pytest.raises(H.HypernetworkError, match="unpacks to 16.0 MB"):
        H.load_bytes(data, "bomb.pt")


def test_ordinary_pt_files_pass_the_archive_check():
    from tests.test_hypernetwork import a1111_file

    data, _ = a1111_file((32, 64))
    check_torch_archive(data, H.PT_LIMITS)
    assert H.load_bytes(data, "style.pt").widths == [32, 64]


def test_legacy_and_non_zip_pt_files_are_refused():
    buf = io.BytesIO()
    torch.save({"a": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    with pytest.raises(H.HypernetworkError, match="before 1.6"):
        H.load_bytes(buf.getvalue(), "old.pt")


def test_entry_count_is_read_from_the_end_record():
    many = zipped({f"{i}.txt": b"" for i in range(300)}, zipfile.ZIP_STORED)
    assert declared_entries(many) == 300
    with pytest.raises(ArchiveError, match="more than 100 entries"):
        open_zip(many, LIMITS)
    with pytest.raises(ArchiveError, match="damaged or not a zip"):
        declared_entries(b"not a zip at all")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"big.bin": bytes(2 * 2**20)}, "big.bin` in the archive unpacks to 2.0 MB"),
        ({f"{i}.bin": bytes(2**20 - 1) for i in range(5)}, "unpacks to 5.0 MB"),
        ({"zeros.bin": bytes(900_000)}, "unpacks to 0.9 MB from"),  # ratio: a bomb even under the caps
    ],
)
def test_declared_sizes_are_capped(members, message):
    with pytest.raises(ArchiveError, match=message):
        open_zip(zipped(members), LIMITS)


def test_damaged_zips_become_archive_errors():
    data = bytearray(zipped({"a.txt": b"hello world" * 100}, zipfile.ZIP_STORED))
    data[data.index(b"hello")] ^= 0xFF  # a wrong CRC
    archive = open_zip(bytes(data), LIMITS)
    with pytest.raises(ArchiveError, match="a.txt` in the zip is damaged"):
        read_member(archive, archive.infolist()[0])
    future = bytearray(data)
    at = future.index(b"PK\x01\x02")
    future[at + 6] = 64  # "version needed to extract" 6.4 (found by tests/test_fuzz.py's long run)
    with pytest.raises(ArchiveError, match="damaged or not a zip"):
        open_zip(bytes(future), LIMITS)
    broken = bytes(data).replace(b"PK\x01\x02", b"XX\x01\x02")  # the central directory
    with pytest.raises(ArchiveError, match="damaged or not a zip"):
        open_zip(broken, LIMITS)

"""bench/gpu.py keeps working: its --tiny CPU smoke run writes the full table with numbers."""

from __future__ import annotations

import importlib.util
import re

import pytest

from bench import gpu

NUMBER = re.compile(r"^\d+(\.\d+)?$")


def table(text: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under ``## heading`` (cells stripped)."""
    lines = text.split(f"## {heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    body = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break  # the end of this table
        if set(line) <= set("|-"):
            continue
        body.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return body[1:]  # without the header row


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[int, str, str]:
    out = tmp_path_factory.mktemp("bench-gpu") / "GPU_RESULTS.md"
    rc = gpu.main(["--tiny", "--device", "cpu", "--output", str(out)])
    return rc, out.read_text(encoding="utf-8"), str(out)


def test_tiny_run_succeeds(tiny_run):
    rc, text, _ = tiny_run
    assert rc == 0, text.split("<details>")[-1]
    assert text.startswith("# GPU benchmark results (tiny smoke run)")
    assert "failed" not in text.split("## Machine and versions")[0]


def test_throughput_rows_have_numbers(tiny_run):
    _, text, _ = tiny_run
    rows = table(text, "Sampling throughput")
    measured = {(r[0], int(r[1])): r for r in rows}
    expected = [(gpu.FP16, b) for b in (1, 4, 8)] + [(gpu.BF16, b) for b in (1, 4, 8)]
    expected += [(gpu.CONTIGUOUS, b) for b in (1, 4)] + [(gpu.EAGER, b) for b in (1, 4)]
    expected += [(gpu.COMPILED, 1)]
    for key in expected:
        assert key in measured, f"missing row {key}"
        _, _, its, images_per_s, call_s, peak, _ = measured[key]
        for value in (its, images_per_s, call_s):
            assert NUMBER.match(value) and float(value) > 0, (key, measured[key])
        assert peak == "—"  # no CUDA memory on the CPU
    for b in (1, 4):  # SDXL (the tiny SDXL model here)
        assert NUMBER.match(measured[(gpu.SDXL, b)][2]) and NUMBER.match(measured[(gpu.SDXL, b)][3]), measured[(gpu.SDXL, b)]
    assert NUMBER.match(measured[(gpu.SDXL_LORA, 1)][2]) and "rank 32" in measured[(gpu.SDXL_LORA, 1)][6]
    if importlib.util.find_spec("gen_core.hypernetwork") is not None:
        for b in (1, 4):
            assert NUMBER.match(measured[(gpu.HYPERNET, b)][2]), measured[(gpu.HYPERNET, b)]
    else:
        assert "skipped" in measured[(gpu.HYPERNET, 1)][6]


def test_other_measurements(tiny_run):
    _, text, _ = tiny_run
    rows = {r[0]: r for r in table(text, "Other measurements")}

    def value(prefix: str) -> str:
        matches = [r for name, r in rows.items() if name.startswith(prefix)]
        assert len(matches) >= 1, f"no row starting with {prefix!r} in {sorted(rows)}"
        return matches[0][1]

    assert re.match(r"^\d+(\.\d+)? s$", value("Engine.load (fp16"))
    assert re.match(r"^\d+(\.\d+)? s$", value("Imagic /edit fast"))
    assert re.match(r"^\d+(\.\d+)? s$", value("Imagic re-mix"))
    assert re.match(r"^\d+(\.\d+)?× throughput$", value("Worker batching: 4 requests"))
    assert re.match(r"^\d+(\.\d+)? s$", value("torch.compile of the UNet: compile time"))
    assert re.match(r"^\d+(\.\d+)?×$", value("SDXL: one LoRA on / off"))
    assert re.match(r"^\d+(\.\d+)? %$", value("SDXL: switching LoRA sets"))
    hypernet = value("Hypernetwork on / off")
    if importlib.util.find_spec("gen_core.hypernetwork") is not None:
        assert re.match(r"^\d+(\.\d+)?×$", hypernet)
    else:
        assert hypernet == "—"


def test_sections_timed(tiny_run):
    _, text, _ = tiny_run
    sections = {r[0] for r in table(text, "Time per section")}
    assert set(gpu.SECTIONS) <= sections
    assert "| device | cpu |" in text


def test_refuses_full_size_without_a_gpu(monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu.parse_args([])

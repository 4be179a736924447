"""Helpers shared by the benchmarks: the tiny offline engine and side-by-side (interleaved) timing."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gen_core.engine import Engine


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count when ``threads`` is given (else leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


@contextmanager
def tiny_model_dir(
    model_dir: str | Path | None = None, prefix: str = "bench-", family: str = "sd1"
) -> Iterator[Path]:
    """The tiny offline model's directory (of ``family``): ``model_dir`` (created there if missing), else
    one built in a temporary directory that is removed on exit."""
    from gen_core.tiny import ensure_tiny_model

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield ensure_tiny_model(Path(model_dir) if model_dir else Path(tmp) / "tiny", family=family)


def tiny_engine(
    model_dir: str | Path | None = None, threads: int | None = None, prefix: str = "bench-", family: str = "sd1"
) -> Engine:
    """An ``Engine`` loaded from the tiny offline model (see ``tiny_model_dir``), after ``set_threads``."""
    from gen_core.engine import Engine
    from gen_core.types import EngineConfig

    set_threads(threads)
    with tiny_model_dir(model_dir, prefix, family) as path:
        return Engine.load(EngineConfig(model_path=str(path)))


def tiny_engine_fields(engine: Engine) -> dict[str, object]:
    """The result-dict fields that say what a ``tiny_engine`` ran on: model, device, dtype, torch threads."""
    import torch

    return {
        "model": "tiny (diffusers layout, random weights)",
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }


def interleaved(
    variants: Mapping[str, Callable[[], object]], runs: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each variant, measured side by side.

    ``warmup`` untimed rounds call every variant once in order; then each of ``runs`` timed rounds
    calls every variant once, the order alternating (as given, reversed, as given, ...) so that
    neither variant systematically runs first.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in names if i % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def medians(times: Mapping[str, list[float]], scale: float = 1.0) -> dict[str, float]:
    """The median of each variant's times, multiplied by ``scale`` (1000 for milliseconds)."""
    return {name: statistics.median(values) * scale for name, values in times.items()}


def add_on_figures(
    variants: Mapping[str, Callable[[], Any]], switch: Callable[[int], Any], switches: int, runs: int, warmup: int
) -> dict[str, Any]:
    """What a bench of something attached to the UNet for a job (hypernetworks, LoRAs) reports: whether "one"
    changes the picture of "off", each variant's median time and its ratio to "off" (side by side), the median
    time of ``switch(i)`` (attach and detach, ``switches`` times) and whether "off" draws the same pixels after."""
    import numpy as np

    base = np.asarray(variants["off"]())
    changed = bool(np.abs(np.asarray(variants["one"]()).astype(int) - base).mean() > 0)
    times = interleaved(variants, runs, warmup)
    med = medians(times)
    seconds = []
    for i in range(switches):
        started = time.perf_counter()
        switch(i)
        seconds.append(time.perf_counter() - started)
    switch_s = sorted(seconds)[len(seconds) // 2]
    return {
        "changes_image": changed,
        "off_identical_after": bool(np.array_equal(np.asarray(variants["off"]()), base)),
        **{f"median_s_{name}": round(value, 4) for name, value in med.items()},
        **{f"ratio_{name}_over_off": round(value / med["off"], 3) for name, value in med.items() if name != "off"},
        "switch_ms_median": round(switch_s * 1000, 3),
        "switch_over_render": round(switch_s / med["off"], 5),
        "all_s": {name: [round(t, 4) for t in values] for name, values in times.items()},
    }

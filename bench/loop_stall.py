"""How long hostile requests block the event loop: the real bot and the Discord emulator in one
loop with asyncio's slow-callback detection (debug mode, ``slow_callback_duration`` = 50 ms), the
worker idle, every interaction of a fuzz corpus sent as a member would.

    python -m bench.loop_stall [--threshold-ms 50] [--write-corpus]

The corpus is ``bench/corpus/``: ``prompts.json`` (hostile /imagine prompts) and small hostile files
(a zip of three 4096×4096 PNGs, a deflated ``.pt`` bomb, a zip with a wrong CRC); the two large
inputs (a zip of 110,000 entries, a 16.7 MP JPEG) are made at run time by :func:`large_inputs`.
``--write-corpus`` rewrites the small files from :func:`small_inputs`.

Side by side in the same run, the pure functions the bot used before and uses now on the worst
inputs (regex permutations vs the linear scan, Python's ``re`` vs RE2 on ``(a+)+$``, per-run
bracket scaling vs the vectorised one): ratios, not absolute promises.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("corpus")
THRESHOLD_S = 0.05
_SLOW = re.compile(r"took (\d+\.\d+) seconds")


def small_inputs() -> dict[str, bytes]:
    """The hostile files kept in ``bench/corpus`` (a few KB each)."""
    import torch
    from PIL import Image

    def zipped(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for name, data in members.items():
                z.writestr(name, data)
        return buf.getvalue()

    png = io.BytesIO()
    Image.new("L", (4096, 4096)).save(png, format="PNG", optimize=True)
    pixel_bomb = zipped({f"{i}.png": png.getvalue() for i in range(3)} | {f"{i}.txt": b"cat" for i in range(3)})
    pt = io.BytesIO()
    torch.save({"name": "bomb", 32: [{"x": torch.zeros(4 * 2**20)}, {}]}, pt)
    with zipfile.ZipFile(io.BytesIO(pt.getvalue())) as z:
        pt_bomb = zipped({i.filename: z.read(i) for i in z.infolist()})
    crc = bytearray(zipped({"a.png": png.getvalue()[:2000], "a.txt": b"cat"}))
    crc[60] ^= 0xFF
    return {"pixel_bomb.zip": pixel_bomb, "pt_bomb.pt": pt_bomb, "bad_crc.zip": bytes(crc)}


def large_inputs() -> dict[str, bytes]:
    """Inputs too large for the repository, made the same way every run."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(110_000):
            z.writestr(f"{i}.txt", b"")
    ramp = np.add.outer(np.arange(4096, dtype=np.uint16), np.arange(4096, dtype=np.uint16)) // 32
    jpeg = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint8)).convert("RGB").save(jpeg, format="JPEG", quality=80)
    return {"entries_110k.zip": buf.getvalue(), "photo_16mp.jpg": jpeg.getvalue()}


class _SlowCallbacks(logging.Handler):
    """Collects the durations asyncio's debug mode reports for callbacks over the threshold."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.durations: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = _SLOW.search(record.getMessage())
        if found:
            self.durations.append(float(found.group(1)))


async def _answered(it: Any, timeout: float = 120.0) -> None:
    """Wait until the interaction has its answer (a refusal, or the queued/added message)."""
    await it.wait_acked(5)
    await it.original(timeout)


async def _stalls(model_dir: Path, threshold_s: float) -> dict[str, Any]:
    from bench.bot_e2e import _bot

    files = {p.name: p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.suffix in (".zip", ".pt")}
    files |= large_inputs()
    prompts = json.loads((CORPUS / "prompts.json").read_text(encoding="utf-8"))
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        async with _bot(Path(tmp) / "data", model_dir, limits={"max_queued_per_user": 10_000}) as (env, _timed, _users):
            emu = env.emu
            guild, member, admin = emu.guild(), emu.user("alice"), emu.user("admin")
            channel = guild.channel("general")
            await _answered(await emu.invoke(admin, channel, "admin words add", {"word": "re:(a+)+$"}))
            await env.services.queue.pause(guild.id)  # the worker stays idle: what is measured is the interaction
            cases: list[tuple[str, str, dict[str, Any]]] = [
                (f"/imagine {p['name']}", "imagine", {"prompt": p["prompt"]}) for p in prompts
            ]
            for name in files:
                if name.endswith(".zip"):
                    cases.append((f"/hypernet train {name}", "hypernet train", {"name": "x", "images": ("zip", name)}))
            cases.append(("/hypernet upload pt_bomb.pt", "hypernet upload", {"file": ("bin", "pt_bomb.pt")}))
            photo = ("jpg", "photo_16mp.jpg")
            cases.append(("/edit photo_16mp.jpg", "edit", {"prompt": "a cat", "image": photo}))
            cases.append(("/imagine image:photo_16mp.jpg", "imagine", {"prompt": "a cat", "image": photo}))
            cases.append(("/outpaint photo_16mp.jpg", "outpaint", {"prompt": "a cat", "direction": "right", "image": photo}))
            cases.append(("/inpaint photo_16mp.jpg (and as mask)", "inpaint", {"prompt": "a cat", "image": photo, "mask": photo}))
            handler = _SlowCallbacks()
            asyncio_log = logging.getLogger("asyncio")
            asyncio_log.addHandler(handler)
            loop.set_debug(True)
            loop.slow_callback_duration = threshold_s
            results = {}
            try:
                # control: a callback that blocks for 100 ms must be seen, or the numbers below mean nothing
                await loop.run_in_executor(None, time.sleep, 0)  # the executor's thread exists before the control
                loop.call_soon(time.sleep, 0.1)
                await asyncio.sleep(0.2)
                control = max(handler.durations, default=0.0)
                if control < 0.1:
                    raise RuntimeError("asyncio's slow-callback detection did not report a 100 ms callback")
                results["control: a 100 ms blocking callback"] = {"slow_callbacks": len(handler.durations),
                                                                   "worst_callback_ms": round(control * 1000, 1)}  # fmt: skip
                for label, command, options in cases:
                    for key, value in list(options.items()):
                        if isinstance(value, tuple):
                            kind, name = value
                            mime = {"zip": "application/zip", "jpg": "image/jpeg"}.get(kind, "application/octet-stream")
                            options[key] = emu.upload(files[name], name, mime)
                    handler.durations.clear()
                    started = time.perf_counter()
                    await _answered(await emu.invoke(member, channel, command, options))
                    await asyncio.sleep(0.2)  # callbacks finishing after the answer count too
                    results[label] = {
                        "answer_s": round(time.perf_counter() - started, 3),
                        "slow_callbacks": len(handler.durations),
                        "worst_callback_ms": round(max(handler.durations, default=0.0) * 1000, 1),
                    }
            finally:
                loop.set_debug(False)
                asyncio_log.removeHandler(handler)
            await env.services.queue.resume(guild.id)
    return results


def _side_by_side() -> dict[str, dict[str, float]]:
    """The former and the current pure functions on their worst inputs, interleaved."""
    import numpy as np

    from bench.common import interleaved, medians
    from gen_core.prompts import parse_prompt_attention
    from services.jobs import expand_permutations
    from services.text_filter import compile_entries

    former_permutation = re.compile(r"\{([^{}]*,[^{}]*)\}")
    brace = "{" + "," * 6000
    former_regex = re.compile(r"(a+)+$")
    current_regex = compile_entries(("re:(a+)+$",))
    catastrophic = "a" * 22 + "!"  # Python's re doubles its time with every further "a"
    brackets = "(a" * 3000

    def former_brackets() -> None:  # the per-run loop parse_prompt_attention ran before
        weights = [1.0] * 3000
        for start in range(3000):
            for i in range(start, 3000):
                weights[i] *= 1.1

    def current_brackets() -> None:
        weights = np.ones(3000)
        for start in range(3000):
            weights[start:] *= 1.1

    pairs = {
        "permutations {,,,, (6,000 chars)": (lambda: former_permutation.findall(brace), lambda: expand_permutations(brace, 8)),
        "regex (a+)+$ on 22 a's": (lambda: former_regex.search(catastrophic), lambda: current_regex.first_match(catastrophic)),
        "bracket weights (a x 3000": (former_brackets, current_brackets),
    }
    out = {}
    for label, (former, current) in pairs.items():
        ms = medians(interleaved({"former": former, "current": current}, runs=3), 1000)
        out[label] = {"former_ms": round(ms["former"], 2), "current_ms": round(ms["current"], 2),
                      "ratio": round(ms["former"] / max(ms["current"], 1e-6), 1)}  # fmt: skip
    out["parse (a x 3000 (whole parser)"] = {"current_ms": round(medians(interleaved({"p": lambda: parse_prompt_attention(brackets)}, runs=3), 1000)["p"], 2)}
    return out


def run(threshold_ms: float = 50.0, model_dir: str | Path | None = None) -> dict[str, Any]:
    from bench.common import tiny_model_dir

    with tiny_model_dir(model_dir, prefix="bench-stall-") as path:
        interactions = asyncio.run(_stalls(path, threshold_ms / 1000))
    measured = {k: r for k, r in interactions.items() if not k.startswith("control")}
    return {
        "threshold_ms": threshold_ms,
        "worst_callback_ms": max((r["worst_callback_ms"] for r in measured.values()), default=0.0),
        "interactions_over_threshold": sorted(k for k, r in measured.items() if r["slow_callbacks"]),
        "interactions": interactions,
        "side_by_side": _side_by_side(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold-ms", type=float, default=THRESHOLD_S * 1000)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--write-corpus", action="store_true", help="rewrite bench/corpus's small files and exit")
    args = parser.parse_args(argv)
    if args.write_corpus:
        for name, data in small_inputs().items():
            (CORPUS / name).write_bytes(data)
        return
    result = run(args.threshold_ms, args.model_dir)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

"""Which Stable Diffusion family a checkpoint belongs to, read from the checkpoint itself.

* ``sd1`` — SD 1.x: one CLIP ViT-L text encoder (768 wide), 512-px native;
* ``sd2`` — SD 2.x: one OpenCLIP ViT-H text encoder (1024 wide);
* ``sdxl`` — SDXL and its descendants: CLIP ViT-L *and* OpenCLIP bigG (with projection), a pooled
  text embedding and size conditioning (``add_time_ids``) in the UNet, 1024-px native.

A diffusers folder tells by its ``model_index.json`` (a second text encoder) and the text encoder's
width; a single checkpoint by its tensor names (read from the safetensors header, nothing loaded).
``[model] family`` forces a family where detection cannot decide (a hub id, an unusual file); it is
refused where the checkpoint clearly says otherwise, so a wrong setting never half-loads a model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

FAMILIES = ("sd1", "sd2", "sdxl")
AUTO = "auto"

# Tensor-name prefixes of the original (ldm / sgm) single-file layouts.
_SDXL_PREFIX = "conditioner.embedders.1."
_SD2_PREFIX = "cond_stage_model.model."
_SD1_PREFIX = "cond_stage_model.transformer."
_MAX_HEADER = 100 * 1024 * 1024


class FamilyError(ValueError):
    """The family cannot be told or contradicts the setting; the message is for the operator."""


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names of a ``.safetensors`` file, from its JSON header only."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise FamilyError(f"{path}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise FamilyError(f"{path}: not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    return [k for k in header if k != "__metadata__"]


def family_of_keys(keys: list[str]) -> str | None:
    """The family that a single-file checkpoint's tensor names show, or ``None``."""
    if any(k.startswith(_SDXL_PREFIX) for k in keys):
        return "sdxl"
    if any(k.startswith(_SD2_PREFIX) for k in keys):
        return "sd2"
    if any(k.startswith(_SD1_PREFIX) for k in keys):
        return "sd1"
    return None


def _folder_family(folder: Path) -> str | None:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    if "text_encoder_2" in index:
        return "sdxl"
    try:
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return "sd2" if text.get("hidden_size") == 1024 else "sd1"


def _checkpoint_keys(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        return safetensors_keys(path)
    import torch  # a .ckpt is a pickle: read tensor names with the safe loader, memory-mapped

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return list(state.get("state_dict", state))


def detect_family(path: str | Path) -> str | None:
    """The family of a diffusers folder or single checkpoint file; ``None`` when it cannot tell."""
    source = Path(path).expanduser()
    if source.is_dir():
        return _folder_family(source)
    if source.is_file():
        return family_of_keys(_checkpoint_keys(source))
    return None


def resolve_family(path: str | Path, setting: str = AUTO) -> str:
    """The family to load ``path`` as: detected, or ``setting`` where detection cannot tell.

    SD 1.x is assumed when neither says anything (a hub id with ``auto``).
    """
    if setting != AUTO and setting not in FAMILIES:
        raise FamilyError(f"[model] family = {setting!r}: use auto, {', '.join(FAMILIES)}")
    detected = detect_family(path)
    if setting == AUTO:
        return detected or "sd1"
    if detected is not None and detected != setting:
        raise FamilyError(
            f"[model] family = {setting!r}, but {path} is an {detected} checkpoint. "
            f"Set family = \"auto\" (or {detected!r})."
        )
    return setting

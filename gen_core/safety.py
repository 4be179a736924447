"""Image safety checkers: which results must not be shown outside age-restricted channels.

Two real checkers, both offline:

* :class:`DiffusersChecker` — diffusers' ``StableDiffusionSafetyChecker`` (CLIP image embeddings
  against concept embeddings), used when the checkpoint folder has ``safety_checker/`` and
  ``feature_extractor/`` as SD 1.x releases do;
* :class:`NudeNetChecker` — the NudeNet detector (PyPI ``nudenet``, whose wheel carries its ONNX
  model): an image is flagged when an exposed intimate part is detected with enough confidence.

:func:`load_checker` picks one by the ``moderation.image_check`` setting: ``"auto"`` uses the
checkpoint's checker, else NudeNet, else none (the caller warns); ``"diffusers"`` / ``"nudenet"``
force one and raise :class:`SafetyCheckerError` with what to do when it cannot load; ``"false"``
turns checking off.  A checker is a callable ``image -> bool`` (True: must not be shown), called on
the GPU thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

MODES = ("auto", "nudenet", "diffusers", "false")
#: NudeNet classes that make an image unfit for a channel that is not age-restricted.
EXPLICIT = frozenset(
    {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "ANUS_EXPOSED", "BUTTOCKS_EXPOSED"}
)


class SafetyCheckerError(RuntimeError):
    """A forced checker could not be loaded; the message says what to install or configure."""


class NudeNetChecker:
    name = "NudeNet"

    def __init__(self, threshold: float = 0.5) -> None:
        try:
            from nudenet import NudeDetector
        except ImportError as exc:
            raise SafetyCheckerError(
                f"image_check = \"nudenet\" needs the nudenet package ({exc}): pip install 'diffusion-bot[nudenet]'"
            ) from None
        self.detector = NudeDetector()
        self.threshold = threshold

    def detections(self, image: Image.Image) -> list[dict]:
        return self.detector.detect(np.asarray(image.convert("RGBA")))

    def __call__(self, image: Image.Image) -> bool:
        return any(d["class"] in EXPLICIT and d["score"] >= self.threshold for d in self.detections(image))


class DiffusersChecker:
    name = "diffusers StableDiffusionSafetyChecker"

    def __init__(self, model_path: Path) -> None:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        folder = Path(model_path)
        if not (folder / "safety_checker").is_dir() or not (folder / "feature_extractor").is_dir():
            raise SafetyCheckerError(
                f'image_check = "diffusers" needs {folder}/safety_checker and {folder}/feature_extractor '
                '(SD 1.x checkpoints ship them); use image_check = "nudenet" or "auto" otherwise'
            )
        try:
            self.checker = StableDiffusionSafetyChecker.from_pretrained(folder / "safety_checker").eval()
            self.processor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor")
        except (OSError, ValueError) as exc:
            raise SafetyCheckerError(f"the checkpoint's safety checker does not load: {exc}") from None

    def __call__(self, image: Image.Image) -> bool:
        import torch

        rgb = image.convert("RGB")
        clip_input = self.processor(rgb, return_tensors="pt").pixel_values.to(self.checker.dtype)
        with torch.inference_mode():
            _, flagged = self.checker(images=np.asarray(rgb)[None].copy(), clip_input=clip_input)
        return bool(flagged[0])


def has_diffusers_checker(model_path: Path | None) -> bool:
    return model_path is not None and (Path(model_path) / "safety_checker").is_dir()


def load_checker(mode: str, model_path: Path | None) -> NudeNetChecker | DiffusersChecker | None:
    """The checker ``mode`` asks for (see the module docstring); None when checking is off or, for
    ``"auto"``, when nothing is available."""
    if mode not in MODES:
        raise SafetyCheckerError(f"image_check = {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "false":
        return None
    if mode == "diffusers":
        return DiffusersChecker(Path(model_path or "."))
    if has_diffusers_checker(model_path):
        try:
            return DiffusersChecker(Path(model_path))
        except SafetyCheckerError as exc:
            log.warning("the checkpoint's safety checker is not usable (%s); trying NudeNet", exc)
    try:
        return NudeNetChecker()
    except SafetyCheckerError:
        if mode == "nudenet":
            raise
        return None

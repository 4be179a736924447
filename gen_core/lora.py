"""LoRA files: read without pickles, checked against the loaded model, applied per job as PEFT adapters.

Layouts (:func:`inspect` tells them apart by tensor names, from the safetensors header alone):

* ``kohya`` — kohya-ss / A1111: ``lora_unet_…`` / ``lora_te_…`` (SDXL: ``lora_te1_…``, ``lora_te2_…``)
  with ``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha`` (LyCORIS LoCon keys too, where
  diffusers reads them);
* ``diffusers`` — ``unet.…`` / ``text_encoder.…`` / ``text_encoder_2.…`` with ``lora.down``/``lora.up``
  or ``lora_A``/``lora_B``;
* ``peft`` — a PEFT adapter of the UNet (``base_model.model.…lora_A.weight``), renamed to the
  diffusers layout on load.

Which model a file was made for shows in the input width of a cross-attention key projection
(768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL; the tiny test models have their own): a file whose
width differs from the loaded UNet's is refused with a message naming both (:func:`check_fits`).

:class:`LoraAdapters` keeps files loaded as named PEFT adapters in the engine's pipeline (loaded
once, least recently used unloaded beyond a size budget) and activates a set with weights around a
job (:meth:`LoraAdapters.active`); on exit every adapter is disabled, so the model computes exactly
what it computed before (identical pixels), and the prompt encoder's cached encodings are dropped
whenever a set with text-encoder weights was active.  Training sessions (Imagic, hypernetworks)
need the bare model and unload every adapter first (:meth:`LoraAdapters.unload_all`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen_core.archives import ArchiveError, safetensors_header

log = logging.getLogger(__name__)

LAYOUTS = ("kohya", "diffusers", "peft")
_FAMILY_OF_WIDTH = {768: "an SD 1.x", 1024: "an SD 2.x", 2048: "an SDXL"}
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_PEFT_PREFIX = "base_model.model."
_DOWN = (".lora_down.weight", ".lora.down.weight", ".lora_A.weight")


class LoraError(ValueError):
    """A LoRA file that cannot be used; the message is meant for the member."""


@dataclass(frozen=True)
class LoraInfo:
    layout: str
    tensors: int
    rank: int
    context_width: int | None  # input width of the cross-attention K projection; None if the file has none
    text_encoder: bool  # whether it changes a text encoder too
    metadata: dict[str, str]

    @property
    def made_for(self) -> str:
        if self.context_width is None:
            return "an unknown model"
        return _FAMILY_OF_WIDTH.get(self.context_width, f"a {self.context_width}-wide model")


@dataclass(frozen=True)
class LoraUse:
    """One LoRA in a job: its file and weights for the UNet and the text encoders (see :func:`tag_weights`)."""

    path: str
    unet_weight: float = 1.0
    te_weight: float = 1.0


def tag_weights(weights: Sequence[float], named: Sequence[tuple[str, float]] = ()) -> tuple[float, float]:
    """``(unet, text encoder)`` weights of an A1111 tag's arguments, as A1111 reads them:
    ``<lora:name:w>`` sets both, ``<lora:name:te_w:unet_w>`` each (text encoder first), and
    ``te=``/``unet=`` name one; a missing weight is 1 (the UNet's follows the text encoder's)."""
    if len(weights) > 2:
        raise LoraError("A LoRA tag takes at most two weights: `<lora:name:0.8>` or `<lora:name:te_weight:unet_weight>`.")
    extra = [key for key, _ in named if key not in ("te", "unet")]
    if extra:
        raise LoraError(f"`{extra[0]}=` is not a LoRA tag setting; use `te=` or `unet=`.")
    values = dict(named)
    te = values.get("te", weights[0] if weights else 1.0)
    unet = values.get("unet", weights[1] if len(weights) > 1 else te)
    return unet, te


def _layout(keys: list[str]) -> str:
    if all(k.startswith(_KOHYA_PREFIXES) for k in keys):
        return "kohya"
    if all(k.startswith(_DIFFUSERS_PREFIXES) for k in keys):
        return "diffusers"
    if all(k.startswith(_PEFT_PREFIX) for k in keys):
        return "peft"
    raise LoraError(
        "That file is not a LoRA in a layout the bot reads (kohya/A1111 `lora_unet_…`, diffusers `unet.…` "
        "or a PEFT adapter)."
    )


def _is_cross_attention_key(key: str) -> bool:
    return "attn2" in key and ("to_k" in key or "k_proj" in key) and key.endswith(_DOWN)


def inspect(data: bytes) -> LoraInfo:
    """What a ``.safetensors`` LoRA holds, from its header (no tensor is read, nothing unpickled)."""
    try:
        header, meta = safetensors_header(data)
    except ArchiveError as exc:
        raise LoraError(f"{exc}.") from None
    keys = list(header)
    if not keys:
        raise LoraError("That LoRA holds no tensors.")
    layout = _layout(keys)
    downs = [k for k in keys if k.endswith(_DOWN)]
    if not downs:
        raise LoraError("That file has no LoRA down/up weights (`lora_down`, `lora.down` or `lora_A`).")
    cross = [header[k]["shape"] for k in keys if _is_cross_attention_key(k)]
    width = cross[0][-1] if cross and len(cross[0]) == 2 else None
    text = any(k.startswith(("lora_te", "text_encoder")) or ".text_model." in k for k in keys)
    return LoraInfo(layout, len(keys), int(header[downs[0]]["shape"][0]), width, text, meta)


def check_fits(info: LoraInfo, context_width: int, model: str = "this server's model") -> None:
    """Refuse a LoRA made for another family than the loaded model (:class:`LoraError`)."""
    if info.context_width is not None and info.context_width != context_width:
        ours = _FAMILY_OF_WIDTH.get(context_width, f"a {context_width}-wide model")
        raise LoraError(
            f"That LoRA was made for {info.made_for} model (context width {info.context_width}); "
            f"{model} is {ours} model (width {context_width}). Use a LoRA trained for it."
        )


def _diffusers_state(state: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout != "peft":
        return state
    out = {}
    for key, value in state.items():
        inner = key.removeprefix(_PEFT_PREFIX)
        out[("text_encoder." if inner.startswith("text_model.") else "unet.") + inner] = value
    return out


class LoraAdapters:
    """The LoRAs loaded into one engine's pipeline as PEFT adapters (GPU thread only)."""

    def __init__(self, engine: Any, max_bytes: int = 2 << 30) -> None:
        self.engine = engine
        self.max_bytes = max_bytes
        self._loaded: collections.OrderedDict[str, int] = collections.OrderedDict()  # adapter -> bytes
        self._text: dict[str, bool] = {}  # adapter -> whether it changes the text encoders
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    @staticmethod
    def adapter_name(path: str | Path) -> str:
        """A stable adapter name per file content (a re-upload under the same path is a new adapter)."""
        p = Path(path)
        stat = p.stat()
        digest = hashlib.sha1(f"{p.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return f"lora_{digest}"

    def _load(self, path: str) -> str:
        import torch

        # Adapter weights are model parameters: never inference tensors (jobs run in inference mode;
        # training later, e.g. Imagic's own adapter, must still be able to touch every parameter).
        with torch.inference_mode(False), torch.no_grad():
            return self._load_file(path)

    def _load_file(self, path: str) -> str:
        from safetensors.torch import load as load_safetensors

        name = self.adapter_name(path)
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return name
        data = Path(path).read_bytes()
        info = inspect(data)
        check_fits(info, self.engine.unet.config.cross_attention_dim)
        state = _diffusers_state(load_safetensors(data), info.layout)
        try:
            self.engine.txt2img.load_lora_weights(state, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise LoraError(f"That LoRA does not fit this model: {exc}") from None
        self._loaded[name] = len(data)
        self._text[name] = info.text_encoder
        return name

    def _evict(self, keep: set[str]) -> None:
        """Unload the least recently used adapters (not in ``keep``) while over the size budget."""
        for old in [n for n in self._loaded if n not in keep]:
            if sum(self._loaded.values()) <= self.max_bytes:
                break
            del self._loaded[old], self._text[old]
            self.engine.txt2img.delete_adapters(old)
            log.info("unloaded LoRA adapter %s (cache over %d bytes)", old, self.max_bytes)

    def unload_all(self) -> None:
        """Remove every adapter (the original modules come back): for work that needs the bare
        model, such as a training session.  Files load again on their next use."""
        with self._lock:
            if self._loaded:
                self.engine.txt2img.unload_lora_weights()
                self._loaded.clear()
                self._text.clear()
                self.engine.encoder.clear_cache()

    @contextlib.contextmanager
    def active(self, uses: Sequence[LoraUse]) -> Iterator[None]:
        """Activate ``uses`` (loading files on first use) for the duration; afterwards every adapter
        is off and the model computes as before.  No uses: nothing changes."""
        if not uses:
            yield
            return
        pipe = self.engine.txt2img
        with self._lock:
            names = [self._load(u.path) for u in uses]
            self._evict(set(names))
            weights = []
            for name, u in zip(names, uses, strict=True):
                w = {"unet": u.unet_weight}
                if self._text[name]:  # weights for parts an adapter lacks only make diffusers warn
                    w["text_encoder"] = u.te_weight
                    if getattr(pipe, "text_encoder_2", None) is not None:
                        w["text_encoder_2"] = u.te_weight
                weights.append(w)
            pipe.enable_lora()
            pipe.set_adapters(names, adapter_weights=weights)
            self.engine.encoder.clear_cache()
            try:
                yield
            finally:
                pipe.disable_lora()
                self.engine.encoder.clear_cache()

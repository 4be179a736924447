"""Textual-inversion embeddings (A1111): read without running pickles, checked against the loaded model.

Formats read (:func:`read`):

* ``.pt`` — AUTOMATIC1111's ``{"string_to_param": {"*": [n, width]}, "name": …, "step": …}`` (also a
  ``.pt`` holding ``emb_params``): the zip is checked first, then it is unpickled with
  ``weights_only=True`` only (:func:`gen_core.archives.load_torch`);
* ``.safetensors`` — SD 1.x/2.x ``emb_params`` ``[n, width]``; SDXL ``clip_l`` ``[n, 768]`` and
  ``clip_g`` ``[n, 1280]`` (one tensor per text encoder), the header checked before any tensor is read.

:meth:`TextualInversion.to_bytes` writes the native form (``.safetensors``: ``emb_params``, or
``clip_l``/``clip_g``), so the worker only ever reads safetensors.  The vectors are used by
:mod:`gen_core.prompts` wherever a prompt names the embedding (``embeddings=`` of the encoders); a
name that is an ordinary word of the tokenizer's vocabulary would take that word over in every
prompt, so :func:`check_name` refuses it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from gen_core.archives import ArchiveError, ArchiveLimits, load_torch, safetensors_header

#: At most one chunk of vectors: an embedding is never split across chunks.
MAX_VECTORS = 75
#: An A1111 ``.pt`` embedding is a small zip: a pickle and a few tensors.
PT_LIMITS = ArchiveLimits(max_members=64, max_member_bytes=64 * 2**20, max_total_bytes=64 * 2**20, max_ratio=1.5)
_SDXL_KEYS = ("clip_l", "clip_g")
_FAMILY_OF_WIDTHS = {(768,): "an SD 1.x", (1024,): "an SD 2.x", (768, 1280): "an SDXL"}


class EmbeddingError(ValueError):
    """An embedding file or name that cannot be used; the message is meant for the member."""


def family_of(widths: Sequence[int]) -> str:
    """``widths`` (one per text encoder) in words: "an SDXL", or "a 32-wide" for a model of its own."""
    widths = tuple(widths)
    return _FAMILY_OF_WIDTHS.get(widths, f"a {' + '.join(map(str, widths))}-wide")


@dataclass(frozen=True)
class TextualInversion:
    """An embedding's vectors: ``[n, width]`` per text encoder of the model it was made for, in the
    encoders' order (SDXL: ViT-L, then bigG); ``meta`` says where it comes from (plain strings)."""

    vectors: tuple[torch.Tensor, ...]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """How many tokens it takes in a prompt."""
        return int(self.vectors[0].shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(v.shape[1]) for v in self.vectors)

    def check_fits(self, widths: Sequence[int], model: str = "this server's model") -> None:
        """Refuse an embedding made for another model family than ``widths`` (the text encoders' widths)."""
        if self.widths != tuple(widths):
            raise EmbeddingError(
                f"That embedding was made for {family_of(self.widths)} model (text width {' + '.join(map(str, self.widths))}); "
                f"{model} is {family_of(widths)} model (width {' + '.join(map(str, widths))}). Use an embedding trained for it."
            )

    def to_bytes(self) -> bytes:
        """The native ``.safetensors`` form (``emb_params``, or ``clip_l`` + ``clip_g`` for two encoders)."""
        keys = ("emb_params",) if len(self.vectors) == 1 else _SDXL_KEYS
        tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in zip(keys, self.vectors, strict=True)}
        return save(tensors, metadata=self.meta or None)


def _checked(vectors: Sequence[Any], meta: dict[str, str]) -> TextualInversion:
    out = []
    for v in vectors:
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise EmbeddingError("That embedding's vectors are not a table of numbers.")
        if v.dim() == 1:
            v = v.unsqueeze(0)  # one vector saved without its row axis
        if v.dim() != 2 or not 1 <= v.shape[0] <= MAX_VECTORS or v.shape[1] < 1:
            raise EmbeddingError(
                f"That embedding has vectors of shape {list(v.shape)}; one to {MAX_VECTORS} vectors of the text width are expected."
            )
        if not bool(torch.isfinite(v).all()):
            raise EmbeddingError("That embedding holds infinite or undefined numbers.")
        out.append(v.detach().to(torch.float32).contiguous())
    if len({v.shape[0] for v in out}) != 1:
        raise EmbeddingError("That embedding's text encoders have different vector counts.")
    return TextualInversion(tuple(out), meta)


def _from_pt(data: bytes) -> TextualInversion:
    try:
        raw = load_torch(data, PT_LIMITS)
    except ArchiveError as exc:
        raise EmbeddingError(f"{exc}.") from None
    if not isinstance(raw, dict):
        raise EmbeddingError("That .pt file does not hold an embedding (expected a dictionary).")
    if "string_to_param" in raw:
        params = raw["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError("That embedding's `string_to_param` must hold exactly one tensor.")
        (vectors,) = params.values()
    elif "emb_params" in raw:
        vectors = raw["emb_params"]
    else:
        raise EmbeddingError("That .pt file holds no embedding (no `string_to_param` or `emb_params`).")
    meta = {k: str(raw[k]) for k in ("name", "step", "sd_checkpoint", "sd_checkpoint_name") if isinstance(raw.get(k), str | int)}
    return _checked([vectors], meta)


def _from_safetensors(data: bytes) -> TextualInversion:
    try:
        header, meta = safetensors_header(data)
    except ArchiveError as exc:
        raise EmbeddingError(f"{exc}.") from None
    if set(header) == {"emb_params"} or set(header) == set(_SDXL_KEYS):
        tensors = load(data)
        keys = ("emb_params",) if "emb_params" in header else _SDXL_KEYS
        return _checked([tensors[k] for k in keys], meta)
    shown = ", ".join(f"`{k[:40]}`" for k in list(header)[:4])
    raise EmbeddingError(
        f"That .safetensors file is not a textual-inversion embedding (it holds {shown or 'nothing'}; "
        "expected `emb_params`, or `clip_l` and `clip_g` for SDXL)."
    )


def read(data: bytes, filename: str) -> TextualInversion:
    """An uploaded embedding by its extension: ``.safetensors`` or an A1111 ``.pt``.  Blocking (it
    parses the file): run it off the event loop."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".safetensors":
        return _from_safetensors(data)
    if suffix == ".pt":
        return _from_pt(data)
    raise EmbeddingError("Upload an embedding as .safetensors or an AUTOMATIC1111 .pt file.")


def load_file(path: str | Path) -> TextualInversion:
    """A stored embedding (its native ``.safetensors``)."""
    return _from_safetensors(Path(path).read_bytes())


def text_widths(text_encoders: Sequence[Any]) -> tuple[int, ...]:
    """The token widths of a model's text encoders, in order (what an embedding must match)."""
    return tuple(int(e.get_input_embeddings().embedding_dim) for e in text_encoders)


def check_name(name: str, tokenizer: Any) -> None:
    """Refuse a name that is an ordinary word of the tokenizer's vocabulary: written in any prompt, it
    would be read as the embedding instead of the word."""
    if f"{name.lower()}</w>" in tokenizer.get_vocab():
        raise EmbeddingError(
            f"`{name}` is an ordinary word of the model's vocabulary, so every prompt that uses the word would get "
            "the embedding. Choose a name that is not a word, e.g. with a digit or a dash."
        )


@dataclass(frozen=True)
class EmbeddingUse:
    """An embedding a request may name in its texts: the name and the stored file."""

    name: str
    path: str


class EmbeddingCache:
    """Stored embeddings loaded once (a few KB each), least recently used dropped beyond ``size``."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: collections.OrderedDict[tuple[str, int], TextualInversion] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path) -> TextualInversion:
        path = Path(path)
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            raise EmbeddingError(f"the embedding file {path.name} is missing; upload it again") from None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        loaded = load_file(path)
        with self._lock:
            self._items[key] = loaded
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return loaded

"""Hypernetworks (NovelAI, 2022): small MLPs that transform the text context before K and V.

A hypernetwork holds, per context width (768 for SD 1.x cross-attention; 320/640/1280 for the
self-attention of the UNet levels when present), a pair of transforms ``out = x + MLP(x) * strength``
— one for the key input, one for the value input — while the query and the rest of the UNet stay
untouched.  Several hypernetworks are chained in order, each with its own strength.

They are applied through diffusers attention processors (:func:`applied`): each original processor
is wrapped and sees the attention module through a thin view whose ``to_k``/``to_v`` first run the
chain on their input, so every attention backend (eager, SDPA, xformers, LoRA-adapted projections)
keeps its exact arithmetic.  On exit the very processor objects found are put back, so a job
without modules after one with them gives the pixels of a fresh engine.

Files: ``.safetensors`` (native; tensors ``"<width>.<k|v>.<layer key>"`` and the structure,
name, base model and training information in the header) and AUTOMATIC1111 ``.pt`` files (also the
old NovelAI ``linear1``/``linear2`` keys), read with ``torch.load(weights_only=True)`` only: a file
with pickled code is refused without running anything.

Training (:func:`train`) fits a new hypernetwork on captioned images with aspect-ratio buckets and
the base model frozen; see its docstring.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import logging
import math
import pickle
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load, save

from gen_core.archives import ArchiveError, ArchiveLimits, check_torch_archive
from gen_core.buckets import nearest_bucket
from gen_core.training import denoising_loss, image_latents, noise_schedule, training_session
from gen_core.types import Cancelled, Progress, is_cancelled

log = logging.getLogger(__name__)

FORMAT = "hypernetwork/1"
#: Activations A1111 offers by name (``swish`` is its Hardswish); ``linear`` means none.
ACTIVATIONS: dict[str, type[torch.nn.Module] | None] = {
    "linear": None,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}
MAX_LAYERS = 8
MAX_MULTIPLIER = 8.0
STAGE_TRAIN = "training"
_OLD_NOVELAI_KEYS = {"linear1.": "linear.0.", "linear2.": "linear.1."}
#: A ``.pt`` zip stores its tensors uncompressed: what it declares unpacked is about its own size.
PT_LIMITS = ArchiveLimits(max_members=4096, max_member_bytes=512 * 2**20, max_total_bytes=512 * 2**20, max_ratio=1.5)


class HypernetworkError(ValueError):
    """A hypernetwork file or option that cannot be used; the message is meant for the user."""


# ----------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class Structure:
    """The shape of every MLP of a hypernetwork (A1111's options).

    ``layers``: widths as multiples of the context width (``(1, 2, 1)``: dim → 2·dim → dim);
    ``activation`` after each hidden layer (and after the last with ``activate_output``);
    ``layer_norm`` after each linear layer; ``dropout`` per entry of ``layers`` (the first and last
    must be 0; only active while training).
    """

    layers: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation: str = "linear"
    layer_norm: bool = False
    activate_output: bool = False
    dropout: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        layers = tuple(float(x) for x in self.layers)
        object.__setattr__(self, "layers", layers)
        dropout = tuple(float(x) for x in self.dropout) or (0.0,) * len(layers)
        object.__setattr__(self, "dropout", dropout)
        if not 2 <= len(layers) <= MAX_LAYERS or layers[0] != 1 or layers[-1] != 1:
            raise HypernetworkError(
                f"layer structure {list(layers)} must start and end with 1 and have 2 to {MAX_LAYERS} entries, e.g. 1, 2, 1"
            )
        if any(not 0 < x <= MAX_MULTIPLIER for x in layers):
            raise HypernetworkError(f"layer widths must be between 0 and {MAX_MULTIPLIER} times the context width")
        if self.activation not in ACTIVATIONS:
            raise HypernetworkError(f"unknown activation {self.activation!r}; use one of {', '.join(ACTIVATIONS)}")
        if len(dropout) != len(layers) or any(not 0 <= p < 1 for p in dropout) or dropout[0] or dropout[-1]:
            raise HypernetworkError("dropout needs one rate in [0, 1) per layer entry, 0 for the first and last")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class HypernetMLP(torch.nn.Module):
    """``x + MLP(x) * strength`` for one context width; ``linear`` holds A1111's layer keys."""

    def __init__(self, dim: int, structure: Structure) -> None:
        super().__init__()
        s, layers = structure, []
        last = len(s.layers) - 2
        for i in range(len(s.layers) - 1):
            out = int(dim * s.layers[i + 1])
            layers.append(torch.nn.Linear(int(dim * s.layers[i]), out))
            activation = ACTIVATIONS[s.activation]
            if activation is not None and (i < last or s.activate_output):
                layers.append(activation())
            if s.layer_norm:
                layers.append(torch.nn.LayerNorm(out))
            if s.dropout[i + 1] > 0:
                layers.append(torch.nn.Dropout(p=s.dropout[i + 1]))
        self.linear = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * strength

    def init_weights(self, generator: torch.Generator) -> None:
        """Small normal weights, zero biases, a zero last layer: a new module starts as the identity."""
        linears = [m for m in self.linear if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for m in linears:
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * 0.01)
                m.bias.zero_()
            linears[-1].weight.zero_()


@dataclass
class Hypernetwork:
    """Named transforms per context width: ``layers[width] = (key MLP, value MLP)``."""

    name: str
    structure: Structure
    layers: dict[int, tuple[HypernetMLP, HypernetMLP]]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, name: str, widths: Sequence[int], structure: Structure | None = None, seed: int = 0) -> Hypernetwork:
        """A fresh (identity) hypernetwork for ``widths``."""
        structure = structure or Structure()
        generator = torch.Generator("cpu").manual_seed(seed)
        layers = {}
        for w in sorted(set(widths)):
            pair = (HypernetMLP(w, structure), HypernetMLP(w, structure))
            for mlp in pair:
                mlp.init_weights(generator)
            layers[w] = pair
        return cls(name=name, structure=structure, layers=layers)

    @property
    def widths(self) -> list[int]:
        return sorted(self.layers)

    def modules(self) -> Iterator[HypernetMLP]:
        for pair in self.layers.values():
            yield from pair

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters()]

    def to(self, device: torch.device | str) -> Hypernetwork:
        """Move to ``device`` (weights stay fp32; contexts are cast around them)."""
        for m in self.modules():
            m.to(device=device, dtype=torch.float32)
        return self

    def train(self, mode: bool = True) -> Hypernetwork:
        for m in self.modules():
            m.train(mode)
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"{w}.{kv}.{key}": value.detach().cpu().contiguous()
            for w, pair in self.layers.items()
            for kv, mlp in zip("kv", pair, strict=True)
            for key, value in mlp.state_dict().items()
        }

    def to_bytes(self) -> bytes:
        """The native ``.safetensors`` form (structure and metadata in the header)."""
        header = {
            "format": FORMAT,
            "name": self.name,
            "structure": json.dumps(self.structure.as_dict()),
            "meta": json.dumps(self.meta, default=str),
        }
        return save(self.tensors(), metadata=header)

    def save(self, path: Path) -> None:
        """Write atomically (a temporary file renamed over ``path``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)

    def check_fits(self, model_widths: set[int]) -> None:
        """Raise :class:`HypernetworkError` unless every width is one of the model's attention widths."""
        foreign = [w for w in self.widths if w not in model_widths]
        if foreign:
            raise HypernetworkError(
                f"`{self.name}` has layers for context width(s) {', '.join(map(str, foreign))}, but this model's "
                f"attention widths are {', '.join(map(str, sorted(model_widths)))}: it was made for another base model."
            )


# ----------------------------------------------------------------------------- files


def _build(name: str, structure: Structure, weights: dict[int, tuple[dict, dict]], meta: dict[str, Any]) -> Hypernetwork:
    if not weights:
        raise HypernetworkError("the file holds no hypernetwork layers")
    layers = {}
    for width, (k_state, v_state) in weights.items():
        if not 1 <= width <= 16384:
            raise HypernetworkError(f"context width {width} is not plausible")
        pair = (HypernetMLP(width, structure), HypernetMLP(width, structure))
        for mlp, state, label in zip(pair, (k_state, v_state), "kv", strict=True):
            try:
                mlp.load_state_dict({_new_key(str(k)): v for k, v in state.items()}, strict=True)
            except (RuntimeError, TypeError, AttributeError, ValueError) as exc:
                first = str(exc).splitlines()[0][:200]
                raise HypernetworkError(
                    f"the {label} layers for width {width} do not match the layer structure {list(structure.layers)} "
                    f"(activation {structure.activation}, layer norm {structure.layer_norm}): {first}"
                ) from None
        layers[width] = pair
    return Hypernetwork(name=name, structure=structure, layers=layers, meta=meta)


def _new_key(key: str) -> str:
    for old, new in _OLD_NOVELAI_KEYS.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _structure(**options: Any) -> Structure:
    try:
        return Structure(**options)
    except (TypeError, ValueError) as exc:
        raise HypernetworkError(f"invalid layer structure in the file: {exc}") from None


def _a1111_dropout(layers: Sequence[float], use_dropout: bool, last_layer_dropout: bool) -> tuple[float, ...]:
    # A1111 files written before ``dropout_structure`` existed: 0.3 on hidden layers when enabled.
    if not use_dropout:
        return (0.0,) * len(layers)
    hidden = [0.3] * (len(layers) - 3) + [0.3 if last_layer_dropout else 0.0]
    return (0.0, *hidden, 0.0)


def _plain(raw: dict, key: str) -> Any:
    """A setting from a ``.pt`` file as a plain value (a one-element tensor becomes its number);
    anything else that is not a number, a string or a list of them is refused."""
    value = raw.get(key)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise HypernetworkError(f"the file's `{key}` setting holds {value.numel()} values where one is expected")
        value = value.item()
    if isinstance(value, list | tuple):
        if not all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in value):
            raise HypernetworkError(f"the file's `{key}` setting is not a list of numbers")
        return list(value)
    if value is None or isinstance(value, str | int | float):
        return value
    raise HypernetworkError(f"the file's `{key}` setting is a {type(value).__name__}, not a plain value")


def load_a1111(data: bytes, name: str) -> Hypernetwork:
    """An AUTOMATIC1111 / NovelAI ``.pt`` hypernetwork: the zip checked (:data:`PT_LIMITS`), then
    unpickled with ``weights_only=True`` only."""
    try:
        check_torch_archive(data, PT_LIMITS)
    except ArchiveError as exc:
        raise HypernetworkError(str(exc)) from None
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HypernetworkError(
            "this .pt file contains pickled code or objects other than tensors, which the bot refuses to load. "
            f"Convert it to .safetensors, or re-save it from a trusted tool. ({str(exc).splitlines()[0][:160]})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged stream makes torch.load raise anything (KeyError, BadZipFile …)
        raise HypernetworkError(f"this is not a readable PyTorch .pt file ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(raw, dict):
        raise HypernetworkError("this .pt file does not hold a hypernetwork (expected a dictionary)")
    weights = {}
    for key, value in raw.items():
        if isinstance(key, int):
            if not (isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, dict) for v in value)):
                raise HypernetworkError(f"layers for width {key} must be a (key, value) pair of state dicts")
            weights[key] = (value[0], value[1])
    layers = tuple(_plain(raw, "layer_structure") or (1, 2, 1))
    dropout = _plain(raw, "dropout_structure") or _a1111_dropout(
        layers, bool(_plain(raw, "use_dropout")), bool(_plain(raw, "last_layer_dropout"))
    )
    structure = _structure(
        layers=layers,
        activation=str(_plain(raw, "activation_func") or "linear").lower(),
        layer_norm=bool(_plain(raw, "is_layer_norm")),
        activate_output=bool(_plain(raw, "activate_output")),
        dropout=tuple(dropout),
    )
    meta = {
        "source": "a1111",
        "step": _plain(raw, "step"),
        "base_model": _plain(raw, "sd_checkpoint_name") or _plain(raw, "sd_checkpoint"),
        "info": _plain(raw, "optional_info"),
    }
    return _build(str(_plain(raw, "name") or name), structure, weights, {k: v for k, v in meta.items() if v is not None})


def load_safetensors(data: bytes, name: str) -> Hypernetwork:
    """A native ``.safetensors`` hypernetwork (see :meth:`Hypernetwork.to_bytes`)."""
    try:
        header = _safetensors_header(data)
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise HypernetworkError(f"this is not a readable .safetensors file ({str(exc)[:160]})") from None
    if header.get("format") != FORMAT:
        raise HypernetworkError("this .safetensors file is not a hypernetwork made by this bot (no hypernetwork header)")
    try:
        options = json.loads(header["structure"])
        meta = json.loads(header.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError):
        raise HypernetworkError("the hypernetwork header is damaged") from None
    structure = _structure(**options) if isinstance(options, dict) else _structure(layers=())
    weights: dict[int, tuple[dict, dict]] = {}
    for key, value in tensors.items():
        width, kv, rest = _split_key(key)
        weights.setdefault(width, ({}, {}))["kv".index(kv)][rest] = value
    return _build(header.get("name") or name, structure, weights, meta if isinstance(meta, dict) else {})


def describe_origin(meta: dict[str, Any]) -> list[str]:
    """Lines saying where a module comes from (base model, training or import), from its header;
    fields a hand-made file left out or filled with something else are skipped."""
    lines = []
    if isinstance(meta.get("base_model"), str | int | float):
        lines.append(f"Base model: {meta['base_model']}")
    training = meta.get("training")
    if isinstance(training, dict):
        buckets = training.get("buckets")
        buckets = ", ".join(f"{k}×{v}" for k, v in buckets.items()) if isinstance(buckets, dict) else "?"
        loss = training.get("final_loss")
        loss = f"{loss:.4f}" if isinstance(loss, int | float) else "?"
        lines.append(
            f"Trained on {training.get('images', '?')} images for {training.get('steps', '?')} steps"
            f" (buckets {buckets}; final loss {loss})"
        )
    elif meta.get("step"):
        lines.append(f"Imported from A1111 (step {meta['step']})")
    return lines


def _split_key(key: str) -> tuple[int, str, str]:
    width, kv, rest = (key.split(".", 2) + ["", ""])[:3]
    if not width.isdigit() or kv not in ("k", "v") or not rest:
        raise HypernetworkError(f"unexpected tensor {key!r} in the hypernetwork file")
    return int(width), kv, rest


def _safetensors_header(data: bytes) -> dict[str, str]:
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or size > len(data) - 8:
        raise ValueError("bad header length")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def load_bytes(data: bytes, filename: str) -> Hypernetwork:
    """Load an uploaded file by its extension: ``.safetensors`` or A1111 ``.pt``."""
    stem, _, suffix = filename.rpartition(".")
    suffix = suffix.lower()
    if suffix == "safetensors":
        return load_safetensors(data, stem)
    if suffix in ("pt", "pth"):
        return load_a1111(data, stem)
    raise HypernetworkError(f"`{filename}`: upload a hypernetwork as .safetensors or an A1111 .pt file")


def load_file(path: Path) -> Hypernetwork:
    path = Path(path)
    return load_bytes(path.read_bytes(), path.name)


def model_widths(unet: torch.nn.Module) -> set[int]:
    """The context widths the UNet's attention layers take for K and V (self and cross)."""
    from diffusers.models.attention_processor import Attention

    return {m.to_k.in_features for m in unet.modules() if isinstance(m, Attention)}


class ModuleCache:
    """Loaded hypernetworks on one device, least recently used dropped beyond ``size`` (GPU thread)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: collections.OrderedDict[tuple[str, int, str], Hypernetwork] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path, device: torch.device) -> Hypernetwork:
        path = Path(path)
        try:
            key = (str(path), path.stat().st_mtime_ns, str(device))
        except FileNotFoundError:
            raise HypernetworkError(f"the module file {path.name} is missing; upload or train it again") from None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        hn = load_file(path).to(device).train(False)
        with self._lock:
            self._items[key] = hn
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return hn


# ----------------------------------------------------------------------------- application

Chain = Sequence[tuple[Hypernetwork, float]]


class _Penalty:
    """Accumulates ``Σ depth_weight · mean(residual²)`` over the attention calls of one forward pass
    (training only): layers at the highest resolution weigh 1, each downsampling level 1/4 less."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.total: torch.Tensor | float = 0.0

    def add(self, before: torch.Tensor, after: torch.Tensor, tokens: int) -> None:
        self.total = self.total + (tokens / self.max_tokens) * (after - before).pow(2).mean()


def transform(chain: Chain, x: torch.Tensor, which: int) -> torch.Tensor:
    """Run the chain's key (``which`` 0) or value (1) transforms for ``x``'s width over ``x``."""
    width = x.shape[-1]
    out = x
    for hn, strength in chain:
        pair = hn.layers.get(width)
        if pair is not None:
            out = pair[which](out.float(), strength).to(x.dtype)
    return out


class _KVView:
    """The attention module as a processor sees it, with ``to_k``/``to_v`` fed transformed contexts."""

    def __init__(self, attn: Any, processor: HypernetworkProcessor, tokens: int) -> None:
        self._attn = attn
        self._processor = processor
        self._tokens = tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attn, name)

    def to_k(self, context: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._attn.to_k(self._processor.context(context, 0, self._tokens), *args, **kwargs)

    def to_v(self, context: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._attn.to_v(self._processor.context(context, 1, self._tokens), *args, **kwargs)


class HypernetworkProcessor:
    """Wraps an attention processor; K and V inputs go through the chain first, Q does not.

    Not an ``nn.Module`` on purpose: attaching it registers nothing in the UNet's parameters."""

    def __init__(self, inner: Any, chain: Chain, penalty: _Penalty | None = None) -> None:
        self.inner = inner
        self.chain = list(chain)
        self.penalty = penalty

    def context(self, x: torch.Tensor, which: int, tokens: int) -> torch.Tensor:
        out = transform(self.chain, x, which)
        if self.penalty is not None and out is not x:
            self.penalty.add(x.float(), out.float(), tokens)
        return out

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        tokens = hidden_states.shape[1] if hidden_states.ndim == 3 else math.prod(hidden_states.shape[2:])
        return self.inner(_KVView(attn, self, tokens), hidden_states, *args, **kwargs)


@contextlib.contextmanager
def applied(engine: Any, chain: Chain, penalty: _Penalty | None = None) -> Iterator[None]:
    """The chain on the engine's UNet for the duration of the block; the original processor objects
    are restored on exit, whatever happens.  An empty chain changes nothing."""
    if not chain and penalty is None:
        yield
        return
    unet = engine.unet
    with engine.lock:
        original = unet.attn_processors
        unet.set_attn_processor({name: HypernetworkProcessor(p, chain, penalty) for name, p in original.items()})
        try:
            yield
        finally:
            unet.set_attn_processor(dict(original))  # set_attn_processor consumes the dict it is given


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`train`.  ``shallow_penalty`` weighs the squared context change at the
    highest-resolution attention layers (which overfit first); deeper layers count 4× less per level."""

    steps: int = 500
    lr: float = 1e-4
    batch_size: int = 1
    structure: Structure = Structure()
    shallow_penalty: float = 0.001
    clip_skip: int = 2
    seed: int = 0


@dataclass
class Example:
    """One training image: latents of the image scaled to cover its bucket, and its caption."""

    bucket: tuple[int, int]
    latents: torch.Tensor  # [1, 4, h, w] covering the bucket's latent size
    caption: str
    cells: tuple[int, int]  # the bucket in latent cells (height, width): the size of a training crop


@dataclass
class TrainResult:
    hypernetwork: Hypernetwork
    losses: list[float]
    buckets: dict[str, int]


def training_size(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """An image's nearest bucket and the size (multiples of 8) it is scaled to so that it covers it."""
    width, height = size
    bw, bh = nearest_bucket(width, height, buckets)
    scale = max(bw / width, bh / height)
    return (bw, bh), (max(bw, math.ceil(width * scale / 8) * 8), max(bh, math.ceil(height * scale / 8) * 8))


def fit_for_training(image: Image.Image, buckets: Sequence[tuple[int, int]]) -> Image.Image:
    """``image`` at the size training uses (what is stored for a training job: no larger)."""
    _, size = training_size(image.size, buckets)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def prepare_examples(engine: Any, images: Sequence[Image.Image], captions: Sequence[str], buckets: Sequence[tuple[int, int]]) -> list[Example]:
    """Each image to its nearest bucket, scaled (Lanczos) to cover it, VAE-encoded once."""
    from gen_core.images import to_rgb

    factor = engine.geometry.vae_factor
    examples = []
    for image, caption in zip(images, captions, strict=True):
        image = to_rgb(image) if image.mode != "RGB" else image
        bucket, _ = training_size(image.size, buckets)
        latents = image_latents(engine, fit_for_training(image, buckets))
        examples.append(Example(bucket, latents, caption, (bucket[1] // factor, bucket[0] // factor)))
    return examples


def _crop(example: Example, rng: random.Random | None) -> torch.Tensor:
    """A crop of the example's latents at its bucket's size: random, or the centre without ``rng``."""
    (h, w), latents = example.cells, example.latents
    spare_h, spare_w = latents.shape[2] - h, latents.shape[3] - w
    top, left = (rng.randint(0, spare_h), rng.randint(0, spare_w)) if rng else (spare_h // 2, spare_w // 2)
    return latents[:, :, top : top + h, left : left + w]


def _batches(examples: Sequence[Example], batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of example indices, each from one bucket, buckets drawn by their size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.bucket, []).append(i)
    keys = sorted(groups)
    weights = [len(groups[k]) for k in keys]
    while True:
        members = groups[rng.choices(keys, weights)[0]]
        yield rng.sample(members, min(batch_size, len(members)))


def encode_captions(engine: Any, captions: Sequence[str], clip_skip: int) -> list[torch.Tensor]:
    """Each caption's embedding ``[1, 77·n, dim]``, all padded to the same number of chunks."""
    encoder = engine.encoder
    with torch.inference_mode():
        chunks = max(encoder.encode(c, clip_skip=clip_skip).shape[1] // 77 for c in captions)
        return [encoder.encode(c, clip_skip=clip_skip, min_chunks=chunks).clone() for c in captions]


def _noise(scheduler: Any, shape: torch.Size, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.randint(0, int(scheduler.config.num_train_timesteps), (shape[0],), generator=generator)
    return torch.randn(shape, generator=generator), t


def chain_loss(
    engine: Any,
    scheduler: Any,
    latents: torch.Tensor,
    cond: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    chain: Chain,
    penalty: _Penalty | None = None,
) -> torch.Tensor:
    """The denoising loss with ``chain`` applied (its context changes added to ``penalty``)."""
    with applied(engine, chain, penalty):
        return denoising_loss(engine, scheduler, latents, cond, noise, t)


def evaluate(
    engine: Any,
    chain: Chain,
    images: Sequence[Image.Image],
    captions: Sequence[str],
    buckets: Sequence[tuple[int, int]],
    *,
    samples: int = 8,
    clip_skip: int = 2,
    seed: int = 0,
) -> float:
    """The mean denoising loss over every image (centre crop) at ``samples`` fixed noises and
    timesteps: a score to compare hypernetworks (or none) on the same data."""
    examples = prepare_examples(engine, images, captions, buckets)
    conds = encode_captions(engine, captions, clip_skip)
    scheduler = noise_schedule(engine)
    generator = torch.Generator("cpu").manual_seed(seed)
    total = 0.0
    with torch.inference_mode():
        for ex, cond in zip(examples, conds, strict=True):
            latents = _crop(ex, None).expand(samples, -1, -1, -1)
            noise, t = _noise(scheduler, latents.shape, generator)
            total += float(chain_loss(engine, scheduler, latents, cond.expand(samples, -1, -1), noise, t, chain))
    return total / len(examples)


def train(
    engine: Any,
    name: str,
    images: Sequence[Image.Image],
    captions: Sequence[str],
    buckets: Sequence[tuple[int, int]],
    config: TrainConfig = TrainConfig(),
    *,
    progress: Callable[[Progress], Any] | None = None,
    cancel: Any = None,
) -> TrainResult:
    """Train a new hypernetwork on captioned images; the base model stays frozen and unchanged.

    Each image goes to its nearest bucket, scaled to cover it; every step draws a batch from one
    bucket and takes a fresh random crop of each latent.  The loss is the denoising loss (noise or
    v, as the scheduler predicts) plus ``shallow_penalty`` × the depth-weighted context change.
    ``progress`` gets one :class:`Progress` per step (stage ``"training"``), ``cancel`` is checked
    every step (:class:`Cancelled`).
    """
    if not images:
        raise HypernetworkError("training needs at least one image")
    if engine.is_sdxl:
        raise HypernetworkError(
            "Hypernetwork training is for SD 1.x/2.x models; this server runs an SDXL model. Use a LoRA instead."
        )
    examples = prepare_examples(engine, images, captions, buckets)
    conds = encode_captions(engine, captions, config.clip_skip)
    rng = random.Random(config.seed)
    generator = torch.Generator("cpu").manual_seed(config.seed)
    hn = Hypernetwork.new(name, sorted(model_widths(engine.unet)), config.structure, seed=config.seed)
    hn.to(engine.device).train(True)
    scheduler = noise_schedule(engine)
    optimiser = torch.optim.AdamW(hn.parameters(), lr=config.lr, weight_decay=0.0)
    losses: list[float] = []
    batches = _batches(examples, config.batch_size, rng)
    with training_session(engine) as unet:  # the engine held, the UNet frozen and restored as found
        unet.eval()
        for step in range(1, config.steps + 1):
            if is_cancelled(cancel):
                raise Cancelled()
            idx = next(batches)
            latents = torch.cat([_crop(examples[i], rng) for i in idx])
            cond = torch.cat([conds[i] for i in idx])
            noise, t = _noise(scheduler, latents.shape, generator)
            penalty = _Penalty(latents.shape[2] * latents.shape[3])
            with torch.enable_grad():
                denoise = chain_loss(engine, scheduler, latents, cond, noise, t, [(hn, 1.0)], penalty)
                (denoise + config.shallow_penalty * penalty.total).backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            losses.append(float(denoise.detach()))
            if progress is not None:
                progress(Progress(step, config.steps, (0,), stage=STAGE_TRAIN))
    hn.train(False)
    counts = collections.Counter(f"{ex.bucket[0]}x{ex.bucket[1]}" for ex in examples)
    hn.meta = {
        "source": "trained",
        "base_model": engine.model_name,
        "training": {
            "images": len(examples),
            "steps": config.steps,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "shallow_penalty": config.shallow_penalty,
            "buckets": dict(counts),
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        },
    }
    return TrainResult(hn, losses, dict(counts))

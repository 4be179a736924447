"""A1111-style generation parameters: the ``parameters`` PNG text chunk.

The text is what AUTOMATIC1111's web UI writes (and what most tools read)::

    a photo of a cat
    Negative prompt: blurry
    Steps: 28, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x768, Model hash: abcdef1234, ...

The prompt and negative prompt may span several lines; the last line holds ``Label: value`` pairs
separated by ``", "``.  Values containing a comma, colon or newline are written as JSON strings.

Parameter dicts use these keys (the engine writes them, :func:`parse_parameters` returns them):
``prompt``, ``negative_prompt``, ``steps``, ``sampler``, ``cfg_scale``, ``seed``, ``width``,
``height``, ``model_hash``, ``model``, ``clip_skip``, ``denoising_strength``, ``extra_noise``,
``guidance_min_sigma`` (A1111's ``NGMS``).
Any other key is written with the key itself as label (so ``extra`` fields such as ``job`` round
trip); unknown labels are parsed back as string values under the label.
"""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PNG_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"

# (key, label, type) in the order A1111 writes them; "Size" stands for width and height.
_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("steps", "Steps", int),
    ("sampler", "Sampler", str),
    ("cfg_scale", "CFG scale", float),
    ("seed", "Seed", int),
    ("size", "Size", str),
    ("model_hash", "Model hash", str),
    ("model", "Model", str),
    ("clip_skip", "Clip skip", int),
    ("denoising_strength", "Denoising strength", float),
    ("extra_noise", "Extra noise", float),
    ("guidance_min_sigma", "NGMS", float),
)
_BY_LABEL = {label: (key, kind) for key, label, kind in _FIELDS}
# GenerationRequest field names accepted by format_parameters for the same fields.
_ALIASES = {"negative": "negative_prompt", "cfg": "cfg_scale", "strength": "denoising_strength", "noise": "extra_noise"}
_KNOWN_KEYS = (
    {key for key, _, _ in _FIELDS} | {"prompt", "negative_prompt", "width", "height"} | set(_ALIASES)
)
_SCALARS = (str, int, float, bool, list, tuple, dict)

# One "Label: value" pair: a label of word characters, spaces, '-' and '/', then either a JSON
# string or everything up to the next comma.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
_BAD_LABEL_CHARS = re.compile(r"[^\w \-/]")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            text = str(int(value))
        else:
            text = repr(round(value, 6))
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _label(key: str) -> str:
    label = _BAD_LABEL_CHARS.sub("_", str(key)).strip()
    return label if len(label) >= 2 and label[0] not in " -/" else f"x_{label}"


def format_parameters(params: dict[str, Any]) -> str:
    """The A1111 ``parameters`` text for a parameter dict.

    ``None`` values and values that are not plain data (images, bytes) are left out; the
    GenerationRequest names ``negative``, ``cfg``, ``strength`` and ``noise`` are accepted for
    ``negative_prompt``, ``cfg_scale``, ``denoising_strength`` and ``extra_noise``.
    """
    params = dict(params)
    for alias, key in _ALIASES.items():
        if alias in params and params.get(key) is None:
            params[key] = params[alias]
    text = str(params.get("prompt") or "")
    negative = str(params.get("negative_prompt") or "")
    if negative:
        text += f"\n{NEGATIVE_PREFIX} {negative}"
    pairs: list[tuple[str, Any]] = []
    for key, label, _ in _FIELDS:
        if key == "size":
            if params.get("width") is not None and params.get("height") is not None:
                pairs.append((label, f"{int(params['width'])}x{int(params['height'])}"))
        elif params.get(key) is not None:
            pairs.append((label, params[key]))
    for key, value in params.items():
        if key not in _KNOWN_KEYS and isinstance(value, _SCALARS):
            pairs.append((_label(key), value))
    line = ", ".join(f"{label}: {_format_value(value)}" for label, value in pairs)
    return f"{text}\n{line}".strip()


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse A1111 ``parameters`` text into a dict (see the module doc for the keys).

    Known fields get their types (``steps``, ``seed``, ``clip_skip``, ``width``, ``height`` int;
    ``cfg_scale``, ``denoising_strength``, ``extra_noise`` float); everything else is a string
    under its label.  A1111 1.9+ writes the scheduler apart (``Sampler: DPM++ 2M, Schedule type:
    Karras``); ``sampler`` then combines both ("DPM++ 2M Karras"), ``Schedule type`` is kept too.
    """
    lines = text.strip().split("\n")
    params_line = lines[-1]
    if len(_PAIR.findall(params_line)) < 3:  # no parameter line: all of it is prompt
        params_line = ""
    else:
        lines = lines[:-1]
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            target = negative
            line = line[len(NEGATIVE_PREFIX) :].strip()
        target.append(line)
    result: dict[str, Any] = {
        "prompt": "\n".join(prompt).strip(),
        "negative_prompt": "\n".join(negative).strip(),
    }

    for label, raw in _PAIR.findall(params_line):
        label = label.strip()
        value = _unquote(raw)
        if label == "Size":
            size = _SIZE.match(value)
            if size:
                result["width"], result["height"] = int(size.group(1)), int(size.group(2))
                continue
        known = _BY_LABEL.get(label)
        if known is None:
            result[label] = value
            continue
        key, kind = known
        try:
            result[key] = kind(value) if kind is not int else int(float(value))
        except ValueError:
            result[key] = value
    schedule = result.get("Schedule type")
    sampler = result.get("sampler")
    if isinstance(sampler, str) and schedule and schedule != "Automatic" and not sampler.endswith(schedule):
        result["sampler"] = f"{sampler} {schedule}"
    return result


def png_with_parameters(image: Image.Image, text: str, compress_level: int = 4) -> bytes:
    """The image as PNG bytes with ``text`` in a ``parameters`` text chunk (tEXt, or iTXt when
    the text is not Latin-1, as A1111 writes it)."""
    info = PngInfo()
    info.add_text(PNG_KEY, text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def read_png_parameters(data: bytes, max_pixels: int = 4096 * 4096) -> str | None:
    """The ``parameters`` text of PNG bytes, or ``None`` (not a PNG, no such chunk).

    Only the chunks before the image data are read (where A1111 and we put the text); chunks after
    it are looked at only for images of at most ``max_pixels``, since that means decoding.
    """
    try:
        image = Image.open(io.BytesIO(bytes(data)), formats=["PNG"])
    except Exception:
        return None
    try:
        value = image.info.get(PNG_KEY)
        if value is None and image.size[0] * image.size[1] <= max_pixels:
            value = image.text.get(PNG_KEY)  # type: ignore[attr-defined]
    except Exception:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None

"""A1111-style ``parameters`` text and the PNG chunk that carries it."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gen_core.metadata import format_parameters, parse_parameters, png_with_parameters, read_png_parameters
from gen_core.types import GeneratedImage

PARAMS = {
    "prompt": "a cat",
    "negative_prompt": "blurry",
    "steps": 28,
    "sampler": "Euler a",
    "cfg_scale": 7.0,
    "seed": 123,
    "width": 512,
    "height": 768,
    "model_hash": "abcdef1234",
    "model": "tiny",
    "clip_skip": 2,
    "Job": 5,
    "Note": "a, b: c",
}

# Exactly as AUTOMATIC1111 webui 1.10 writes it: multi-line prompt and negative prompt, the
# scheduler apart from the sampler, quoted values with commas and colons.
A1111_TEXT = (
    "masterpiece, best quality, 1girl, solo,\n"
    "(blue hair:1.2), smile, looking at viewer <lora:add_detail:0.6>\n"
    "Negative prompt: lowres, bad anatomy, (worst quality:1.4),\n"
    "extra fingers\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3405691582, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.55, "
    'Clip skip: 2, Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", '
    'TI hashes: "easynegative: c74b4e810b03, badhand: 4e3dbd6a4e9c", Version: v1.10.1'
)


def test_format_writes_the_a1111_layout():
    assert format_parameters(PARAMS) == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x768, Model hash: abcdef1234, "
        'Model: tiny, Clip skip: 2, Job: 5, Note: "a, b: c"'
    )


def test_format_details():
    text = format_parameters({**PARAMS, "negative_prompt": "", "cfg_scale": 7.5, "denoising_strength": 0.35})
    assert "Negative prompt" not in text
    assert "CFG scale: 7.5" in text and "Denoising strength: 0.35" in text
    # GenerationRequest names are accepted; None and non-data values are left out.
    text = format_parameters(
        {"prompt": "x", "negative": "y", "cfg": 5, "steps": 3, "seed": None, "img": object()}
    )
    assert text == "x\nNegative prompt: y\nSteps: 3, CFG scale: 5"
    # No prompt at all: the parameter line comes first (as A1111 writes it).
    assert format_parameters({"steps": 1, "sampler": "DDIM", "seed": 2}) == "Steps: 1, Sampler: DDIM, Seed: 2"


def test_round_trip():
    parsed = parse_parameters(format_parameters(PARAMS))
    for key in ("prompt", "negative_prompt", "steps", "sampler", "cfg_scale", "seed", "width", "height"):
        assert parsed[key] == PARAMS[key]
    assert parsed["model_hash"] == "abcdef1234" and parsed["model"] == "tiny" and parsed["clip_skip"] == 2
    assert parsed["Job"] == "5" and parsed["Note"] == "a, b: c"
    assert isinstance(parsed["steps"], int) and isinstance(parsed["cfg_scale"], float)


def test_round_trip_multiline_and_tricky_values():
    params = {
        "prompt": "line one,\nline two: (emphasis:1.2)",
        "negative_prompt": "neg one\nneg two",
        "steps": 20,
        "sampler": "DPM++ 2M Karras",
        "seed": 1,
        "Quote": 'he said "hi", then: bye\\',
        "Tags": ["a", "b"],
    }
    parsed = parse_parameters(format_parameters(params))
    assert parsed["prompt"] == params["prompt"]
    assert parsed["negative_prompt"] == params["negative_prompt"]
    assert parsed["sampler"] == "DPM++ 2M Karras"
    assert parsed["Quote"] == params["Quote"]
    assert parsed["Tags"] == '["a", "b"]'


def test_parse_a1111_chunk():
    p = parse_parameters(A1111_TEXT)
    assert p["prompt"] == (
        "masterpiece, best quality, 1girl, solo,\n(blue hair:1.2), smile, looking at viewer <lora:add_detail:0.6>"
    )
    assert p["negative_prompt"] == "lowres, bad anatomy, (worst quality:1.4),\nextra fingers"
    assert p["steps"] == 28
    assert p["sampler"] == "DPM++ 2M Karras" and p["Schedule type"] == "Karras"
    assert p["cfg_scale"] == 7.0
    assert p["seed"] == 3405691582
    assert (p["width"], p["height"]) == (512, 768)
    assert p["model_hash"] == "6ce0161689" and p["model"] == "v1-5-pruned-emaonly"
    assert p["denoising_strength"] == 0.55 and p["clip_skip"] == 2
    assert p["Hires upscale"] == "2" and p["Hires upscaler"] == "Latent"
    assert p["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert p["TI hashes"] == "easynegative: c74b4e810b03, badhand: 4e3dbd6a4e9c"
    assert p["Version"] == "v1.10.1"


def test_parse_older_a1111_and_prompt_only_text():
    old = "a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 81761151"
    p = parse_parameters(old)
    assert p["prompt"] == "a dog" and p["negative_prompt"] == "" and p["sampler"] == "Euler a"
    assert p["cfg_scale"] == 7.5 and p["model_hash"] == "81761151"
    only = parse_parameters("just a prompt, with: a colon")
    assert only == {"prompt": "just a prompt, with: a colon", "negative_prompt": ""}


def test_png_round_trip_and_unicode():
    image = Image.new("RGB", (16, 16), (10, 20, 30))
    text = format_parameters(PARAMS)
    data = png_with_parameters(image, text)
    assert data.startswith(b"\x89PNG") and b"tEXtparameters\x00" in data
    assert read_png_parameters(data) == text
    assert Image.open(io.BytesIO(data)).getpixel((0, 0)) == (10, 20, 30)

    unicode_text = format_parameters({**PARAMS, "prompt": "猫, かわいい, café"})
    data = png_with_parameters(image, unicode_text)  # not Latin-1: an iTXt chunk, as A1111 does
    assert read_png_parameters(data) == unicode_text


def test_read_a1111_written_png():
    # What A1111 does: PngInfo.add_text("parameters", text) and save.
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    assert parse_parameters(read_png_parameters(buf.getvalue()))["seed"] == 3405691582


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def test_read_chunk_after_image_data_and_missing_chunk():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    plain = buf.getvalue()
    assert read_png_parameters(plain) is None
    # A text chunk after IDAT (allowed by the PNG spec) is found as well.
    late = plain[:-12] + _chunk(b"tEXt", b"parameters\x00late text") + plain[-12:]
    assert read_png_parameters(late) == "late text"
    assert read_png_parameters(b"not a png") is None
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    assert read_png_parameters(jpeg.getvalue()) is None


def test_generated_image_png_bytes():
    gen = GeneratedImage(image=Image.new("RGB", (8, 8)), seed=123, parameters=PARAMS)
    assert read_png_parameters(gen.png_bytes()) == format_parameters(PARAMS) == gen.parameters_text

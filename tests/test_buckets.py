"""NovelAI aspect-ratio buckets, aspect parsing and fitting images to buckets."""

import math

import numpy as np
import pytest
from PIL import Image

from gen_core.buckets import (
    DEFAULT_BUCKETS,
    bucket_choices,
    default_buckets,
    fit_to_bucket,
    nearest_bucket,
    parse_aspect,
    scale_buckets,
)

NOVELAI_DEFAULT = [
    (256, 1024), (320, 1024), (384, 896), (384, 960), (384, 1024), (448, 832), (512, 512),
    (512, 704), (512, 768), (576, 640), (640, 576), (704, 512), (768, 512), (832, 448),
    (896, 384), (960, 384), (1024, 256), (1024, 320), (1024, 384),
]  # fmt: skip


def test_default_buckets_are_novelais():
    assert default_buckets() == NOVELAI_DEFAULT
    assert list(DEFAULT_BUCKETS) == NOVELAI_DEFAULT
    assert default_buckets() == sorted(set(default_buckets()))


@pytest.mark.parametrize("buckets", [default_buckets(), scale_buckets(1024 * 1024), scale_buckets(640 * 640)])
def test_bucket_invariants(buckets):
    sides = [s for b in buckets for s in b]
    assert all(s % 64 == 0 for s in sides)
    assert len(set(buckets)) == len(buckets)
    for w, h in buckets:
        assert (h, w) in buckets  # transposes present


def test_default_bucket_limits():
    for w, h in default_buckets():
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert w * h <= 512 * 768
    for size in [(512, 512), (512, 768), (768, 512)]:
        assert size in default_buckets()


def test_each_width_gets_the_tallest_height_that_fits():
    buckets = default_buckets()
    for w, h in buckets:
        if (w, h) != (512, 512):
            assert h + 64 > 1024 or w * (h + 64) > 512 * 768 or (w, h + 64) in buckets


def test_parameters():
    small = default_buckets(max_area=512 * 512, min_side=256, max_side=768)
    assert (512, 512) in small and (768, 320) in small and (256, 768) in small
    assert all(w * h <= 512 * 512 and max(w, h) <= 768 for w, h in small)
    assert default_buckets(square=None) == [b for b in NOVELAI_DEFAULT if b != (512, 512)]
    with pytest.raises(ValueError):
        default_buckets(min_side=512, max_side=256)
    with pytest.raises(ValueError, match="scale_buckets"):
        default_buckets(max_area=128 * 128)
    assert scale_buckets(128 * 128) == [(64, 64), (64, 192), (128, 128), (192, 64)]


def test_scale_buckets():
    assert scale_buckets(512 * 768) == default_buckets()
    big = scale_buckets(1024 * 1024)
    assert all(w * h <= 1024 * 1024 for w, h in big)
    assert (1024, 1024) in big
    assert max(w * h for w, h in big) > 2 * max(w * h for w, h in default_buckets())
    assert min(min(b) for b in big) > 256 and max(max(b) for b in big) > 1024
    # proportionally bigger: the 2:3 bucket grows with the budget
    w, h = nearest_bucket(2, 3, big)
    assert (w, h) == (832, 1216) and w * h > 2 * 512 * 768
    with pytest.raises(ValueError):
        scale_buckets(0)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((512, 768), (512, 768)),
        ((1000, 1500), (512, 768)),
        ((100, 100), (512, 512)),
        ((4000, 3000), (704, 512)),  # 4:3
        ((1920, 1080), (832, 448)),  # 16:9
        ((1080, 1920), (448, 832)),
        ((10000, 100), (1024, 256)),  # more extreme than any bucket: the widest
        ((100, 10000), (256, 1024)),
        ((2.5, 1), (960, 384)),
    ],
)
def test_nearest_bucket(size, expected):
    assert nearest_bucket(*size) == expected


def test_nearest_bucket_compares_log_ratios_and_prefers_larger_area_on_ties():
    # 1:1 sits exactly between 1:2 and 2:1 in log space: the larger one wins the tie.
    assert nearest_bucket(1, 1, [(256, 512), (640, 320)]) == (640, 320)
    assert nearest_bucket(1, 1, [(512, 256), (320, 640)]) == (320, 640)
    assert nearest_bucket(1, 1, [(512, 512), (1024, 1024), (768, 512)]) == (1024, 1024)
    # In linear terms 1.5 is closer to 2.0 than 1.0 is (0.5 each), logs say 2:1 is nearer.
    assert nearest_bucket(3, 2, [(512, 512), (1024, 512)]) == (1024, 512)
    with pytest.raises(ValueError):
        nearest_bucket(0, 512)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2:3", (512, 768)),
        ("3:2", (768, 512)),
        ("1:1", (512, 512)),
        ("16:9", (832, 448)),
        ("9:16", (448, 832)),
        (" 4 : 3 ", (704, 512)),
        ("1.85:1", (832, 448)),
        ("3x4", (512, 704)),
        ("3X4", (512, 704)),
        ("3×4", (512, 704)),
        ("512x768", (512, 768)),
        ("576x640", (576, 640)),
        ("1920x1080", (832, 448)),
        ("500*500", (512, 512)),
        ("portrait", (512, 768)),
        ("Landscape", (768, 512)),
        ("SQUARE", (512, 512)),
        ("wide", (1024, 256)),
        ("tall", (256, 1024)),
    ],
)
def test_parse_aspect(text, expected):
    assert parse_aspect(text) == expected


def test_parse_aspect_with_other_buckets():
    big = scale_buckets(1024 * 1024)
    assert parse_aspect("square", big) == (1024, 1024)
    assert parse_aspect("832x832", big) == (832, 832)  # an exact bucket is kept
    assert parse_aspect("portrait", big) == (832, 1216)
    w, h = parse_aspect("wide", big)
    assert w / h == max(a / b for a, b in big)


@pytest.mark.parametrize(
    "text", ["", "banana", "2:", ":3", "0:1", "3:0", "0x512", "-2:3", "2:3:4", "512 768", "axb"]
)
def test_parse_aspect_errors(text):
    with pytest.raises(ValueError) as info:
        parse_aspect(text)
    message = str(info.value)
    for form in ("2:3", "16:9", "512x768", "portrait", "landscape", "square", "wide", "tall"):
        assert form in message


def test_bucket_choices():
    choices = bucket_choices()
    assert len(choices) == 19 <= 25
    assert ("Portrait 512×768 (2:3)", "512x768") in choices
    assert ("Landscape 768×512 (3:2)", "768x512") in choices
    assert ("Square 512×512 (1:1)", "512x512") in choices
    assert choices[0][1] == "256x1024" and choices[-1][1] == "1024x256"  # tallest to widest
    for label, value in choices:
        assert parse_aspect(value) == tuple(int(v) for v in value.split("x"))
        assert 1 <= len(label) <= 100 and 1 <= len(value) <= 100  # Discord's limits


def test_bucket_choices_are_capped_at_25():
    big = scale_buckets(1024 * 1024)
    assert len(big) > 25
    choices = bucket_choices(big)
    assert len(choices) == 25
    ratios = sorted(a / b for a, b in big)
    values = [tuple(map(int, v.split("x"))) for _, v in choices]
    assert values[0][0] / values[0][1] == ratios[0] and values[-1][0] / values[-1][1] == ratios[-1]
    assert len(set(values)) == 25


def _marked_image(size, band=20):
    """Gray image with red bands at left/right, green at top/bottom and a blue square in the middle."""
    w, h = size
    img = Image.new("RGB", size, (128, 128, 128))
    img.paste((255, 0, 0), (0, 0, band, h))
    img.paste((255, 0, 0), (w - band, 0, w, h))
    img.paste((0, 255, 0), (0, 0, w, band))
    img.paste((0, 255, 0), (0, h - band, w, h))
    side = min(w, h) // 3
    img.paste((0, 0, 255), ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    return img, side


def _blue_extent(img):
    px = img.load()
    w, h = img.size
    xs = [x for x in range(w) if px[x, h // 2][2] > 200 and px[x, h // 2][0] < 60]
    ys = [y for y in range(h) if px[w // 2, y][2] > 200 and px[w // 2, y][0] < 60]
    return len(xs), len(ys)


def test_fit_to_bucket_size():
    for size, expected in [((1000, 500), (832, 448)), ((600, 900), (512, 768)), ((300, 300), (512, 512))]:
        img, _ = _marked_image(size)
        out = fit_to_bucket(img)
        assert out.size == expected
        assert out.mode == img.mode


def test_fit_to_bucket_crops_instead_of_stretching():
    # 2:1 image into the 832x448 (13:7) bucket: scaled by 448/500, 32 px trimmed each side.
    img, side = _marked_image((1000, 500))
    out = fit_to_bucket(img)
    assert out.size == (832, 448)
    bw, bh = _blue_extent(out)
    assert abs(bw - bh) <= 2  # the square stayed square
    assert abs(bh - side * 448 / 500) <= 2
    px = out.load()
    assert px[2, 224][0] < 200  # left red band was cropped away
    assert px[829, 224][0] < 200
    assert px[416, 2][1] > 200  # top and bottom were not cropped (the image covers the height)
    assert px[416, 445][1] > 200


def test_fit_to_bucket_pads_to_keep_the_whole_picture():
    # 2:1 into 832x448 padded: scaled by 832/1000 to 832x416, 16 px bars of the picture's mean colour.
    img, side = _marked_image((1000, 500))
    out = fit_to_bucket(img, fit="pad")
    assert out.size == (832, 448) and out.mode == img.mode
    bw, bh = _blue_extent(out)
    assert abs(bw - bh) <= 2 and abs(bh - side * 832 / 1000) <= 2  # not stretched, scaled to fit the width
    px = out.load()
    assert px[2, 224][0] > 200 and px[829, 224][0] > 200  # the red bands left and right are kept
    assert px[416, 18][1] > 200 and px[416, 429][1] > 200  # the green bands top and bottom too
    mean = tuple(round(c) for c in np.asarray(img.resize((832, 416)), np.float32).reshape(-1, 3).mean(0))
    for y in (0, 7, 440, 447):  # the bars: one colour, the picture's mean
        assert all(max(abs(a - b) for a, b in zip(px[x, y], mean, strict=True)) <= 2 for x in (0, 400, 831))
    with pytest.raises(ValueError, match="fit"):
        fit_to_bucket(img, fit="stretch")


def test_fit_to_bucket_tall_image_crops_top_and_bottom():
    # 5:12 goes to the 3:7 bucket (384x896): about 17 source px trimmed at top and bottom.
    img, side = _marked_image((500, 1200), band=8)
    out = fit_to_bucket(img)
    assert out.size == (384, 896)
    bw, bh = _blue_extent(out)
    assert abs(bw - bh) <= 2
    px = out.load()
    assert px[192, 2][1] < 200 and px[192, 893][1] < 200  # green bands cropped
    assert px[2, 448][0] > 200  # red bands kept


def test_fit_to_bucket_with_bigger_budget():
    img, _ = _marked_image((1200, 800))
    assert fit_to_bucket(img, max_area=1024 * 1024).size == (1216, 832)
    assert fit_to_bucket(img, buckets=[(640, 640)]).size == (640, 640)


def test_fit_to_bucket_applies_exif_orientation():
    img = Image.new("RGB", (800, 400))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees: displayed as 400x800
    from io import BytesIO

    buf = BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    loaded = Image.open(BytesIO(buf.getvalue()))
    out = fit_to_bucket(loaded)
    assert out.size[1] > out.size[0]
    assert math.isclose(out.size[0] / out.size[1], 448 / 832)

"""Hostile uploads end to end: bombs, damaged archives and refused requests leave nothing behind."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from PIL import Image

from gen_core.hypernetwork import training_size
from tests import test_bot_hypernet
from tests.bot_fixtures import BotEnv, followup_refusal, png
from tests.test_bot_admin import admin as admin_says
from tests.test_bot_hypernet import picture
from tests.test_hostile_modules import resaved
from tests.test_hypernetwork import a1111_file

env = test_bot_hypernet.env  # the same bot: small buckets, short trainings


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def stored_files(env: BotEnv) -> list[Path]:
    root = env.config.data_dir
    return sorted(p for d in ("images", "hypernets") for p in (root / d).rglob("*") if p.is_file())


async def train(env: BotEnv, user, channel, upload, **options):
    return await env.emu.invoke(user, channel, "hypernet train", {"name": "x", "images": upload, "captions": "cat", **options})


async def test_pixel_bombs_in_a_training_zip_are_refused_before_decoding(env: BotEnv):
    emu = env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    huge = png(Image.new("L", (4096, 4096)))
    data = zip_of({f"{i}.png": huge for i in range(5)})
    assert len(data) < 200_000
    balance = await env.balance(guild, alice)
    refusal = await followup_refusal(await train(env, alice, channel, emu.upload(data, "set.zip", "application/zip")))
    assert "83.9 MP in total; the limit is 67.1 MP" in refusal
    assert await env.balance(guild, alice) == balance and stored_files(env) == []


async def test_damaged_and_oversized_archives_are_clear_refusals(env: BotEnv):
    emu = env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    good = zip_of({"a.png": png(picture(64, 64, 1)), "a.txt": b"cat"})
    damaged = bytearray(good)
    damaged[60] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    refusal = await followup_refusal(await train(env, alice, channel, emu.upload(bytes(damaged), "set.zip", "application/zip")))
    assert "in the zip is damaged" in refusal
    many = zip_of({f"{i}.txt": b"" for i in range(500)})
    refusal = await followup_refusal(await train(env, alice, channel, emu.upload(many, "set.zip", "application/zip")))
    assert "more than 192 entries" in refusal
    assert stored_files(env) == []


async def test_a_training_refused_for_credits_stores_nothing(env: BotEnv):
    emu = env.emu
    guild, alice, admin = emu.guild(), emu.user("alice"), emu.user("admin")
    channel = guild.channel("general")
    await (await emu.invoke(admin, channel, "admin credits set", {"user": alice, "amount": 0})).wait_acked(3)
    upload = emu.upload(png(picture(64, 64, 1)), "a.png", "image/png")
    assert "you have 0" in await followup_refusal(await train(env, alice, channel, upload))
    assert stored_files(env) == [] and await env.services.hypernets.visible(guild.id, alice.id) == []


async def test_training_images_are_stored_at_training_size(env: BotEnv):
    emu = env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    upload = emu.upload(png(picture(1024, 512, 2)), "a.png", "image/png")
    it = await train(env, alice, channel, upload, steps=1)
    await it.wait_acked(3)
    status = await env.emu.wait_for_edit(await it.original(5), lambda m: "Job #" in (m.content or ""), timeout=30)
    job = await env.services.queue.get(int(status.content.split("Job #")[1].split()[0]))
    (key,) = job.params["train_images"]
    stored = Image.open(io.BytesIO(await env.services.store.get(key)))
    assert stored.size == (192, 96)  # covers its 128×128-area bucket, not 1024×512
    assert training_size(stored.size, env.services.jobs.buckets)[1] == stored.size  # training scales it no further


async def test_bad_module_files_answer_clearly_and_leave_no_file(env: BotEnv):
    emu = env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    data, _ = a1111_file((32, 64))
    for bad, message in ((resaved(data, step=torch.arange(3)), "holds 3 values"), (data[: len(data) // 2], "damaged or not a zip")):
        it = await emu.invoke(alice, channel, "hypernet upload", {"file": emu.upload(bad, "style.pt", "application/octet-stream")})
        assert message in await followup_refusal(it)
    assert stored_files(env) == []


async def test_refused_picture_requests_store_nothing(env: BotEnv):
    """/imagine image:, /edit, /outpaint and /inpaint refused for credits or a banned word leave no blob;
    the same request once accepted stores its input."""
    emu = env.emu
    guild, alice, admin = emu.guild(), emu.user("alice"), emu.user("admin")
    channel = guild.channel("general")

    def upload():
        return emu.upload(png(picture(96, 64, 3)), "a.png", "image/png")

    requests = [
        ("imagine", {"prompt": "a cat", "image": upload()}),
        ("edit", {"prompt": "a cat", "image": upload()}),
        ("outpaint", {"prompt": "a cat", "image": upload(), "direction": "right"}),
        ("inpaint", {"prompt": "a cat", "image": upload(), "mask": emu.upload(png(Image.new("L", (96, 64), 255)), "m.png", "image/png")}),
    ]
    await admin_says(env, admin, channel, "words add", word="spaceship")
    for command, options in requests:
        banned = await followup_refusal(await emu.invoke(alice, channel, command, {**options, "prompt": "a spaceship"}))
        assert "`spaceship`, which is banned" in banned, command
    await admin_says(env, admin, channel, "credits set", user=alice, amount=0)
    for command, options in requests:
        assert "you have 0" in await followup_refusal(await emu.invoke(alice, channel, command, options)), command
    assert stored_files(env) == []
    await admin_says(env, admin, channel, "credits set", user=alice, amount=100_000)
    it = await emu.invoke(alice, channel, "imagine", requests[0][1])
    await env.emu.wait_for_edit(await it.original(5), lambda m: "Job #" in (m.content or ""), timeout=30)
    (job,) = await env.services.queue.list(guild_id=guild.id, user_id=alice.id, statuses=None)
    assert await env.services.store.exists(job.params["init_image"])

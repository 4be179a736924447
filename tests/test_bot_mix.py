"""/mix end to end: the real bot, worker, SQLite and tiny model against the Discord emulator."""

from __future__ import annotations

from gen_core.metadata import parse_parameters, read_png_parameters
from storage import compute_cost
from tests.bot_fixtures import BotEnv
from tests.test_bot_imagine import is_result, posted_job


async def mix(env: BotEnv, user, channel, **options):
    it = await env.emu.invoke(user, channel, "mix", options)
    await it.wait_acked(3.0)
    return it


async def png_params(env: BotEnv, attachment) -> dict:
    return parse_parameters(read_png_parameters(await env.emu.read_attachment(attachment)))


async def test_mix_then_sweep(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice = emu.guild(), emu.user("alice")
    channel = guild.channel("general")
    before = await bot_env.balance(guild, alice)
    await mix(bot_env, alice, channel, prompts="a cat:0.7 | a kitten:0.3", seed=99)
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    assert len(result.attachments) == 1
    params = await png_params(bot_env, result.attachments[0])
    assert params["prompt"] == "a cat:0.7 | a kitten:0.3"
    assert params["seed"] == 99 and params["Mix mode"] == "blend" and params["Mix weights"] == "0.7, 0.3"
    assert "lowres" in params["negative_prompt"]  # the default undesired preset, as /imagine
    assert "mix (blend): a cat:0.7 | a kitten:0.3" in result.content
    labels = {b.label for b in result.buttons}
    assert "Sweep" in labels and "V1" not in labels and "U1" not in labels
    job = await posted_job(bot_env, result)
    assert job.kind == "mix" and job.cost == compute_cost("mix", 256, 256, 3)
    assert await bot_env.balance(guild, alice) == before - job.cost

    sweep = next(b for b in result.buttons if b.label == "Sweep")
    click = await emu.click(alice, result, sweep.custom_id)
    await click.wait_acked(3)
    grid = await emu.wait_for_message(channel, lambda m: is_result(m) and m.id != result.id, timeout=30)
    assert len(grid.attachments) == 1
    assert (grid.attachments[0].width, grid.attachments[0].height) == (5 * 256, 256)
    grid_params = await png_params(bot_env, grid.attachments[0])
    assert grid_params["seed"] == 99 and grid_params["Mix sweep"] == "0, 0.25, 0.5, 0.75, 1"
    assert "a cat → a kitten at 0, 0.25, 0.5, 0.75, 1" in grid.content
    sweep_job = await posted_job(bot_env, grid)
    assert sweep_job.cost == compute_cost("mix", 256, 256, 3, count=5)  # five renders
    assert emu.failures == []


async def test_composable_midjourney_recipe(bot_env: BotEnv):
    emu = bot_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    await mix(bot_env, alice, channel, prompts="red cat::3 blue dog", mode="composable", count=2, seed=5, normalize=False)
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    assert len(result.attachments) == 2
    first, second = [await png_params(bot_env, a) for a in result.attachments]
    assert first["prompt"] == "red cat:3 | blue dog:1" and first["Mix mode"] == "composable"
    assert first["Mix weights"] == "3, 1" and (first["seed"], second["seed"]) == (5, 6)
    job = await posted_job(bot_env, result)
    # three UNet evaluations per step instead of CFG's two
    assert job.cost == compute_cost("mix", 256, 256, 3, count=2 * 3 / 2)


async def test_bad_recipes_are_refused_without_charge(bot_env: BotEnv):
    emu = bot_env.emu
    guild, alice, channel = emu.guild(), emu.user("alice"), emu.guild().channel("general")
    before = await bot_env.balance(guild, alice)
    for recipe, message in (
        ("cat | | dog", "Part 2 is empty"),
        ("cat:lots | dog", "`lots` is not a number"),
        ("a | b | c | d | e", "the limit is 4"),
        ("cat:1 | dog:-1", "add up to 0"),
    ):
        it = await mix(bot_env, alice, channel, prompts=recipe)
        reply = await it.original(5)
        assert reply.ephemeral and message in reply.embeds[0]["description"], reply.embeds
    assert await bot_env.balance(guild, alice) == before
    assert await bot_env.services.queue.list(user_id=alice.id, statuses=None) == []


async def test_sweep_needs_two_prompts(bot_env: BotEnv):
    emu = bot_env.emu
    alice, channel = emu.user("alice"), emu.guild().channel("general")
    await mix(bot_env, alice, channel, prompts="a lone cat")
    result = await emu.wait_for_message(channel, is_result, timeout=30)
    sweep = next(b for b in result.buttons if b.label == "Sweep")
    click = await emu.click(alice, result, sweep.custom_id)
    reply = await click.original(5)
    assert reply.ephemeral and "at least two prompts" in reply.embeds[0]["description"]

"""A minimal discord.py bot, built here, driven through the emulator end to end."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import struct
import zlib

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from discord_emulator import Emulator, InvokeError, Perm
from tests.emulator_fixtures import run_discord_client


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class Reroll(discord.ui.DynamicItem[discord.ui.Button], template=r"job:(?P<job>[0-9]+):reroll"):
    """A restart-safe button: its state lives in the custom_id."""

    def __init__(self, job: int) -> None:
        super().__init__(discord.ui.Button(label="Reroll", emoji="🔄", custom_id=f"job:{job}:reroll"))
        self.job = job

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"rerolling job {self.job} (client {interaction.client.user.id})",
                                                ephemeral=True)


class StyleView(discord.ui.View):
    @discord.ui.select(custom_id="style-pick", options=[discord.SelectOption(label=s, value=s) for s in ("anime", "photo")])
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        modal = NoteModal(title=f"Note for {select.values[0]}")
        await interaction.response.send_modal(modal)


class NoteModal(discord.ui.Modal):
    note = discord.ui.TextInput(label="Note", custom_id="note")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(content=f"noted: {self.note.value}", view=None)


def make_bot(record: dict, local_guild_id: int | None = None) -> commands.Bot:
    intents = discord.Intents.default()
    bot = commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.05)

    @bot.tree.command(name="imagine", description="Generate images")
    @app_commands.describe(prompt="What to draw", count="How many")
    async def imagine(interaction: discord.Interaction, prompt: str, count: app_commands.Range[int, 1, 4] = 1):
        await interaction.response.defer(thinking=True)
        files = [discord.File(io.BytesIO(tiny_png(8, 4)), f"{i}.png") for i in range(count)]
        view = discord.ui.View(timeout=None)
        view.add_item(Reroll(42))
        await interaction.followup.send(f"**{prompt}**", files=files, view=view)

    @bot.tree.command(name="describe", description="Describe an image")
    async def describe(interaction: discord.Interaction, image: discord.Attachment):
        data = await image.read()
        await interaction.response.send_message(f"{image.filename} {len(data)} {hashlib.sha256(data).hexdigest()}")

    @bot.tree.command(name="hypernet", description="Hypernetworks")
    async def hypernet(interaction: discord.Interaction, name: str):
        await interaction.response.send_message(f"using {name}")

    @hypernet.autocomplete("name")
    async def hypernet_names(interaction: discord.Interaction, current: str):
        names = ["anime", "canvas", "cat-ears", "watercolor"]
        return [app_commands.Choice(name=n, value=n) for n in names if current in n]

    admin = app_commands.Group(name="admin", description="Administration",
                               default_permissions=discord.Permissions(manage_guild=True))
    credits_group = app_commands.Group(name="credits", description="Credits", parent=admin)

    @credits_group.command(name="grant", description="Grant credits")
    async def grant(interaction: discord.Interaction, user: discord.User, amount: int):
        record["grant"] = (user.id, amount, interaction.permissions.manage_guild)
        await interaction.response.send_message(f"granted {amount} to {user.mention}", ephemeral=True)

    bot.tree.add_command(admin)

    @bot.tree.command(name="slow", description="Answers too late")
    async def slow(interaction: discord.Interaction, mode: str):
        try:
            if mode == "late":
                await asyncio.sleep(0.4)
                await interaction.response.send_message("too late")
            else:
                await interaction.response.defer()
                await asyncio.sleep(0.4)
                await interaction.followup.send("token expired by now")
        except discord.HTTPException as exc:
            record["error"] = (exc.status, exc.code)

    @bot.tree.command(name="style", description="Pick a style")
    async def style(interaction: discord.Interaction):
        await interaction.response.send_message("pick one", view=StyleView(timeout=None))

    @bot.event
    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent):
        if payload.user_id != bot.user.id:
            record.setdefault("reactions", []).append((payload.message_id, str(payload.emoji), payload.type))

    if local_guild_id is not None:
        @bot.tree.command(name="local", description="Only in one guild")
        @app_commands.guilds(local_guild_id)
        async def local(interaction: discord.Interaction):
            await interaction.response.send_message(f"local to {interaction.guild.name}")

    async def setup_hook() -> None:
        bot.add_dynamic_items(Reroll)
        await bot.tree.sync()
        if local_guild_id is not None:
            await bot.tree.sync(guild=discord.Object(local_guild_id))

    bot.setup_hook = setup_hook
    return bot


async def test_slash_command_deferred_followup_with_files_and_reaction(emulator: Emulator):
    emu, record = emulator, {}
    alice, general = emu.user("alice"), emu.channel("general")
    async with run_discord_client(make_bot(record), emu) as bot:
        await emu.wait_for_command("imagine")
        assert set(emu.commands.names(emu.guild())) >= {"imagine", "describe", "admin credits grant", "hypernet"}

        it = await emu.invoke(alice, general, "imagine", {"prompt": "a cat", "count": 2})
        assert await it.wait_acked(2) == 5
        msg = await it.original(5)
        assert msg.content == "**a cat**" and not msg.ephemeral and msg.interaction is it
        assert [(a.filename, a.content_type, a.width, a.height) for a in msg.attachments] == [
            ("0.png", "image/png", 8, 4), ("1.png", "image/png", 8, 4)]
        assert await emu.read_attachment(msg.attachments[0]) == tiny_png(8, 4)
        assert [(b.custom_id, b.label, b.emoji) for b in msg.buttons] == [("job:42:reroll", "Reroll", "🔄")]
        assert (await emu.wait_for_message(general, timeout=1)) is msg

        await emu.add_reaction(alice, msg, "🔄")
        await emu.wait_until(lambda: record.get("reactions"), 2, "on_raw_reaction_add")
        assert record["reactions"] == [(msg.id, "🔄", discord.ReactionType.normal)]
        assert bot.is_ready()
    emu.assert_no_failures()


async def test_subcommand_group_attachment_option_autocomplete_and_guild_sync(emulator: Emulator):
    emu, record = emulator, {}
    general, second = emu.channel("general"), emu.guild("Second Guild")
    async with run_discord_client(make_bot(record, local_guild_id=second.id), emu):
        await emu.wait_for_command("local", guild=second)
        assert list(emu.commands.guild_commands[second.id]) == ["local"]
        reply = await (await emu.invoke(emu.user("bob"), second.channel("lounge"), "local")).original(2)
        assert reply.content == "local to Second Guild"
        with pytest.raises(InvokeError, match="no slash command 'local'"):
            await emu.invoke(emu.user("bob"), general, "local")
        await emu.wait_for_command("admin credits grant")
        with pytest.raises(InvokeError):  # hidden from plain members by default_member_permissions
            await emu.invoke(emu.user("alice"), general, "admin credits grant", {"user": emu.user("bob"), "amount": 5})
        it = await emu.invoke(emu.user("mod"), general, "admin credits grant", {"user": emu.user("bob"), "amount": 5})
        reply = await it.original(2)
        assert record["grant"] == (emu.user("bob").id, 5, True)
        assert reply.ephemeral and reply.visible_to(emu.user("mod")) and "granted 5" in reply.content

        png = tiny_png(5, 5)
        upload = emu.upload(png, "input.png", "image/png")
        it = await emu.invoke(emu.user("alice"), general, "describe", {"image": upload})
        answer = await it.original(2)
        assert answer.content == f"input.png {len(png)} {hashlib.sha256(png).hexdigest()}"

        choices = await emu.autocomplete(emu.user("alice"), general, "hypernet", {"name": "ca"}, focused="name")
        assert [c["value"] for c in choices] == ["canvas", "cat-ears"]
    emu.assert_no_failures()


async def test_dynamic_button_works_for_a_new_client_after_restart(emulator: Emulator):
    emu = emulator
    alice, general = emu.user("alice"), emu.channel("general")
    async with run_discord_client(make_bot({}), emu) as first:
        channel = first.get_channel(general.id)
        view = discord.ui.View(timeout=None)
        view.add_item(Reroll(7))
        sent = await channel.send("result", view=view)
        first_id = id(first)
    assert not emu.connected
    msg = emu.messages[sent.id]

    async with run_discord_client(make_bot({}), emu) as second:
        assert id(second) != first_id
        it = await emu.click(alice, msg, "job:7:reroll")
        reply = await it.original(2)
        assert reply.content.startswith("rerolling job 7") and reply.ephemeral
    assert len(emu.events_of("gateway.identify")) == 2
    emu.assert_no_failures()


async def test_select_menu_then_modal_then_update(emulator: Emulator):
    emu = emulator
    alice, general = emu.user("alice"), emu.channel("general")
    async with run_discord_client(make_bot({}), emu):
        await emu.wait_for_command("style")
        msg = await (await emu.invoke(alice, general, "style")).original(2)
        assert [c.custom_id for c in msg.components] == ["style-pick"]
        picked = await emu.select(alice, msg, "style-pick", ["anime"])
        assert await picked.wait_acked(2) == 9 and picked.modal["title"] == "Note for anime"
        submitted = await emu.submit_modal(alice, picked, {"note": "more ears"})
        assert await submitted.wait_acked(2) == 7
        await emu.wait_for_edit(msg, lambda m: m.content == "noted: more ears", timeout=2)
        assert msg.components == []
    emu.assert_no_failures()


async def test_late_response_and_expired_token_reach_the_bot_as_errors(make_emulator):
    emu = await make_emulator(initial_response_timeout=0.2, token_lifetime=0.3)
    record: dict = {}
    async with run_discord_client(make_bot(record), emu):
        await emu.wait_for_command("slow")
        it = await emu.invoke(emu.user("alice"), emu.channel("general"), "slow", {"mode": "late"})
        await emu.wait_until(lambda: record.get("error"), 3, "the bot's late response")
        assert record.pop("error") == (404, 10062) and not it.acked

        it = await emu.invoke(emu.user("alice"), emu.channel("general"), "slow", {"mode": "defer"})
        await emu.wait_until(lambda: record.get("error"), 3, "the bot's follow-up")
        assert record["error"] == (401, 50027) and it.acked
    assert [f.code for f in emu.failures] == [10062, 10062, 50027]


async def test_rate_limited_followup_is_retried_and_missing_permission_seen(emulator: Emulator):
    emu = emulator
    alice, general = emu.user("alice"), emu.channel("general")
    async with run_discord_client(make_bot({}), emu) as bot:
        await emu.wait_for_command("imagine")
        emu.inject_rate_limit(f"/webhooks/{emu.application_id}/", count=1, retry_after=0.05)
        it = await emu.invoke(alice, general, "imagine", {"prompt": "retry me"})
        msg = await it.original(5)
        assert msg.content == "**retry me**" and len(emu.events_of("rest.rate_limited")) == 1

        nsfw = emu.channel("nsfw")
        await emu.set_permissions(nsfw, deny=Perm.ATTACH_FILES)
        channel = bot.get_channel(nsfw.id)
        await emu.wait_until(lambda: not channel.permissions_for(channel.guild.me).attach_files, 2, "CHANNEL_UPDATE")
        assert channel.is_nsfw() and channel.permissions_for(channel.guild.me).send_messages
        with pytest.raises(discord.Forbidden):
            await channel.send(file=discord.File(io.BytesIO(b"x"), "x.png"))
    assert [f.code for f in emu.failures] == [50013]

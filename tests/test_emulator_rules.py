"""The emulator's protocol surface and platform rules, driven with raw HTTP (a plain discord.py client
keeps the gateway session open so interactions can be created)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import discord
import pytest

from discord_emulator import Emulator, InvokeError, Perm
from tests.emulator_fixtures import run_discord_client

COMMANDS = [
    {"name": "imagine", "description": "Make an image", "options": [
        {"type": 3, "name": "prompt", "description": "What to draw", "required": True},
        {"type": 4, "name": "count", "description": "How many", "min_value": 1, "max_value": 4},
        {"type": 3, "name": "style", "description": "Style", "autocomplete": True},
    ]},
    {"name": "settings", "description": "Server settings", "default_member_permissions": str(int(Perm.MANAGE_GUILD))},
]


class Api:
    """A bare REST client: what the bot would send, without discord.py's retries in the way."""

    def __init__(self, emu: Emulator, session: aiohttp.ClientSession) -> None:
        self.emu, self.session = emu, session

    async def __call__(
        self, method: str, path: str, *, body: Any = None, files: list[tuple[str, bytes]] | None = None,
        auth: bool = True, params: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bot {self.emu.bot_token}"} if auth else {}
        kwargs: dict[str, Any] = {"headers": headers, "params": params}
        if files is not None:
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("payload_json", json.dumps(body or {}))
            for i, (name, data) in enumerate(files):
                form.add_field(f"files[{i}]", data, filename=name, content_type="application/octet-stream")
            kwargs["data"] = form
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.emu.api_base + path, **kwargs) as resp:
            text = await resp.text()
            data = json.loads(text) if resp.headers.get("Content-Type") == "application/json" else text
            return resp.status, data, resp

    async def callback(self, it: Any, payload: dict[str, Any], files: list[tuple[str, bytes]] | None = None):
        return await self(
            "POST", f"/interactions/{it.id}/{it.token}/callback", body=payload, files=files, auth=False,
            params={"with_response": "1"},
        )

    async def followup(self, it: Any, payload: dict[str, Any], files: list[tuple[str, bytes]] | None = None):
        return await self(
            "POST", f"/webhooks/{self.emu.application_id}/{it.token}", body=payload, files=files, auth=False,
            params={"wait": "1"},
        )


async def _connected_world(emu: Emulator):
    """Start a plain discord.py client, register COMMANDS globally; yields (client, api)."""
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
    session = aiohttp.ClientSession()
    api = Api(emu, session)
    status, _, _ = await api("PUT", f"/applications/{emu.application_id}/commands", body=COMMANDS)
    assert status == 200
    return client, api, session


@pytest.fixture
async def world(emulator: Emulator):
    client, api, session = await _connected_world(emulator)
    async with run_discord_client(client, emulator):
        yield emulator, client, api
    await session.close()


async def _world_with(make_emulator, **settings):
    emu = await make_emulator(**settings)
    client, api, session = await _connected_world(emu)
    return emu, client, api, session


# -- protocol basics ------------------------------------------------------------------------------------------


async def test_login_endpoints_and_exact_content_type(world):
    emu, client, api = world
    status, me, resp = await api("GET", "/users/@me")
    assert status == 200 and me["id"] == str(emu.bot_user.id) and me["bot"] is True
    assert resp.headers["Content-Type"] == "application/json"
    status, body, _ = await api("GET", "/users/@me", auth=False)
    assert status == 401 and body["code"] == 0
    assert {g.name for g in client.guilds} == {"Test Guild", "Second Guild"}
    guild = client.get_guild(emu.guild("Test Guild").id)
    assert guild.get_channel(emu.channel("nsfw").id).is_nsfw()
    assert guild.me is not None and guild.me.guild_permissions.send_messages


async def test_unimplemented_endpoint_is_a_recorded_failure(world):
    emu, _, api = world
    status, body, _ = await api("GET", "/guilds/1/audit-logs")
    assert status == 404
    assert emu.failures and "not implemented" in emu.failures[-1].message


async def test_default_world_permissions(emulator):
    g = emulator.guild("Test Guild")
    general = g.channel("general")
    assert g.base_permissions(emulator.user("admin")) & Perm.ADMINISTRATOR
    assert g.base_permissions(emulator.user("mod")) & Perm.MANAGE_GUILD
    assert not g.base_permissions(emulator.user("alice")) & Perm.MANAGE_GUILD
    assert g.permissions_in(general, emulator.bot_user) & Perm.ATTACH_FILES
    assert emulator.channel("nsfw").nsfw and emulator.guild("Second Guild").owner is emulator.user("carol")


# -- interaction rules ----------------------------------------------------------------------------------------


async def test_response_and_invoke_checks(world):
    emu, _, api = world
    alice, chan = emu.user("alice"), emu.channel("general")
    with pytest.raises(InvokeError, match="missing required"):
        await emu.invoke(alice, chan, "imagine", {})
    with pytest.raises(InvokeError, match="outside"):
        await emu.invoke(alice, chan, "imagine", {"prompt": "x", "count": 9})
    with pytest.raises(InvokeError, match="default_member_permissions"):
        await emu.invoke(alice, chan, "settings")
    await emu.invoke(emu.user("mod"), chan, "settings")  # Manage Server sees it

    it = await emu.invoke(alice, chan, "imagine", {"prompt": "a cat", "count": 2})
    status, body, _ = await api.callback(it, {"type": 4, "data": {"content": "hi", "flags": 64}})
    assert status == 200 and body["interaction"]["response_message_ephemeral"] is True
    msg = await it.original(1)
    assert msg.ephemeral and msg.visible_to(alice) and not msg.visible_to(emu.user("bob"))
    assert msg not in emu.channel_messages(chan)
    assert (await emu.wait_for_message(chan, user=alice, timeout=1)) is msg


async def test_late_initial_response_fails_with_10062(make_emulator):
    emu, client, api, session = await _world_with(make_emulator, initial_response_timeout=0.2)
    async with session, run_discord_client(client, emu):
        it = await emu.invoke(emu.user("alice"), emu.channel("general"), "imagine", {"prompt": "slow"})
        await asyncio.sleep(0.3)
        assert [f.code for f in it.failures] == [10062]  # the user already saw "This interaction failed"
        status, body, _ = await api.callback(it, {"type": 5})
        assert status == 404 and body["code"] == 10062 and body["message"] == "Unknown interaction"
        assert not it.acked and [f.code for f in emu.failures] == [10062, 10062]


async def test_double_acknowledge_is_40060(world):
    emu, _, api = world
    it = await emu.invoke(emu.user("alice"), emu.channel("general"), "imagine", {"prompt": "x"})
    assert (await api.callback(it, {"type": 5}))[0] == 200
    status, body, _ = await api.callback(it, {"type": 4, "data": {"content": "again"}})
    assert status == 400 and body["code"] == 40060
    assert emu.failures[-1].code == 40060 and emu.failures[-1].interaction_id == it.id


async def test_message_limits(world):
    emu, _, api = world
    it = await emu.invoke(emu.user("alice"), emu.channel("general"), "imagine", {"prompt": "x"})
    status, body, _ = await api.callback(it, {"type": 4, "data": {"content": "x" * 2001}})
    assert status == 400 and body["code"] == 50035
    assert body["errors"]["data"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    button = {"type": 2, "style": 1, "label": "go", "custom_id": "c" * 101}
    status, body, _ = await api.callback(it, {"type": 4, "data": {"content": "ok", "components": [{"type": 1, "components": [button]}]}})
    assert status == 400 and "custom_id" in json.dumps(body["errors"])
    status, body, _ = await api.callback(it, {"type": 4, "data": {"embeds": [{"description": "d"}] * 11}})
    assert status == 400 and body["code"] == 50035
    status, body, _ = await api.callback(it, {"type": 4, "data": {"embeds": [{"description": "d" * 3001}, {"description": "e" * 3000}]}})
    assert status == 400 and body["errors"]["data"]["embeds"]["_errors"][0]["code"] == "MAX_EMBED_SIZE_EXCEEDED"
    assert not it.acked  # refused responses do not acknowledge
    files = [(f"{i}.png", b"x") for i in range(11)]
    status, body, _ = await api.callback(it, {"type": 4, "data": {"content": "files"}}, files=files)
    assert status == 400 and body["code"] == 30015
    status, body, _ = await api.callback(it, {"type": 4, "data": {"content": "ten"}}, files=files[:10])
    assert status == 200 and len(body["resource"]["message"]["attachments"]) == 10
    assert [f.code for f in emu.failures] == [50035, 50035, 50035, 50035, 30015]


async def test_file_over_attachment_size_limit_is_413(make_emulator):
    emu, client, api, session = await _world_with(make_emulator, attachment_size_limit=1000)
    async with session, run_discord_client(client, emu):
        it = await emu.invoke(emu.user("alice"), emu.channel("general"), "imagine", {"prompt": "x"})
        status, body, _ = await api.callback(it, {"type": 4, "data": {"content": "big"}}, files=[("a.png", b"x" * 1001)])
        assert status == 413 and body["code"] == 40005
        status, _, _ = await api("POST", f"/channels/{emu.channel('general').id}/messages", body={"content": "c"},
                                 files=[("b.bin", b"x" * 1001)])
        assert status == 413


async def test_deferral_followup_and_edit_rules(world):
    emu, _, api = world
    alice, chan = emu.user("alice"), emu.channel("general")
    it = await emu.invoke(alice, chan, "imagine", {"prompt": "x"})
    status, body, _ = await api.followup(it, {"content": "too early"})
    assert status == 404 and body["code"] == 10015
    status, body, _ = await api.callback(it, {"type": 5, "data": {"flags": 4}})
    assert status == 400 and body["code"] == 50035  # only EPHEMERAL on a deferral
    status, body, _ = await api.callback(it, {"type": 5, "data": {"flags": 64}})
    assert status == 200 and body["interaction"]["response_message_loading"] is True
    status, body, _ = await api.followup(it, {"content": "first", "flags": 0}, files=[("r.png", b"png")])
    original = await it.original(1)
    assert status == 200 and body["id"] == str(original.id) and original.ephemeral  # filled the deferral
    assert (await it.wait_followup(1)) is original
    status, body, _ = await api.followup(it, {"content": "second"})
    second = await it.wait_followup(1)
    assert not second.ephemeral and second.content == "second"
    path = f"/webhooks/{emu.application_id}/{it.token}/messages/{original.id}"
    status, body, _ = await api("PATCH", path, body={"content": "edited", "attachments": []}, auth=False)
    assert status == 200 and original.content == "edited" and original.attachments == []
    status, _, _ = await api("DELETE", f"/webhooks/{emu.application_id}/{it.token}/messages/@original", auth=False)
    assert status == 204 and original.deleted


async def test_token_expiry_is_401_50027(make_emulator):
    emu, client, api, session = await _world_with(make_emulator, token_lifetime=0.3)
    async with session, run_discord_client(client, emu):
        it = await emu.invoke(emu.user("alice"), emu.channel("general"), "imagine", {"prompt": "x"})
        assert (await api.callback(it, {"type": 5}))[0] == 200
        await asyncio.sleep(0.35)
        status, body, _ = await api.followup(it, {"content": "late"})
        assert status == 401 and body == {"message": "Invalid Webhook Token", "code": 50027}
        assert emu.failures[-1].code == 50027


async def test_autocomplete_choice_limit(world):
    emu, client, api = world
    alice, chan = emu.user("alice"), emu.channel("general")

    async def answer(n: int):
        it = await emu.wait_until(lambda: next((i for i in emu.interactions.values() if i.type == 4 and not i.acked
                                                 and not i.failures), None), 2, "autocomplete")
        return await api.callback(it, {"type": 8, "data": {"choices": [{"name": f"c{i}", "value": f"c{i}"} for i in range(n)]}})

    task = asyncio.create_task(answer(26))
    with pytest.raises(TimeoutError):
        await emu.autocomplete(alice, chan, "imagine", {"prompt": "x", "style": "an"}, focused="style", timeout=0.5)
    status, body, _ = await task
    assert status == 400 and body["code"] == 50035
    task = asyncio.create_task(answer(25))
    choices = await emu.autocomplete(alice, chan, "imagine", {"style": "an"}, focused="style", timeout=2)
    assert len(choices) == 25 and (await task)[0] == 200


# -- channel messages, permissions, rate limits -----------------------------------------------------------------


async def test_bot_without_send_permission_gets_50013(world):
    emu, client, api = world
    art = emu.channel("art")
    await emu.set_permissions(art, deny=Perm.SEND_MESSAGES | Perm.ATTACH_FILES)
    channel = client.get_channel(art.id)
    await emu.wait_until(lambda: not channel.permissions_for(channel.guild.me).send_messages, 2, "CHANNEL_UPDATE")
    with pytest.raises(discord.Forbidden) as exc:
        await channel.send("hello")
    assert exc.value.code == 50013 and emu.failures[-1].code == 50013
    await emu.set_permissions(art, deny=Perm.ATTACH_FILES)
    status, body, _ = await api("POST", f"/channels/{art.id}/messages", body={"content": "x"}, files=[("a.txt", b"a")])
    assert status == 403 and body["code"] == 50013
    status, _, _ = await api("POST", f"/channels/{art.id}/messages", body={"content": "text only"})
    assert status == 200


async def test_injected_429_is_retried_by_discord_py(world):
    emu, client, api = world
    general = client.get_channel(emu.channel("general").id)
    emu.inject_rate_limit("POST /channels/", count=2, retry_after=0.05)
    sent = await general.send("after the rate limit")
    assert sent.content == "after the rate limit"
    assert len(emu.events_of("rest.rate_limited")) == 2 and not emu.failures
    emu.inject_rate_limit("/messages", count=1, retry_after=0.5, is_global=True, scope="global")
    status, body, resp = await api("GET", f"/channels/{general.id}/messages")
    assert status == 429 and resp.headers["Via"] and resp.headers["X-RateLimit-Scope"] == "global"
    assert body == {"message": "You are being rate limited.", "retry_after": 0.5, "global": True}


async def test_messages_history_edit_delete_reactions_dm(world):
    emu, client, api = world
    chan = client.get_channel(emu.channel("general").id)
    sent = [await chan.send(f"m{i}") for i in range(5)]
    newest = [m.content async for m in chan.history(limit=3)]
    assert newest == ["m4", "m3", "m2"]
    after = [m.content async for m in chan.history(after=sent[1], limit=10)]
    assert after == ["m2", "m3", "m4"]
    before = [m.content async for m in chan.history(before=sent[2], limit=10)]
    assert before == ["m1", "m0"]
    fetched = await chan.fetch_message(sent[0].id)
    await fetched.edit(content="edited", attachments=[discord.File(__file__, "a.py")])
    emsg = emu.messages[sent[0].id]
    assert emsg.content == "edited" and [a.filename for a in emsg.attachments] == ["a.py"]
    await fetched.edit(attachments=[])
    assert emsg.attachments == []
    await fetched.add_reaction("🔄")
    assert [u.name for u in emsg.reactions["🔄"]] == [emu.bot_user.name]
    await fetched.remove_reaction("🔄", client.user)
    assert not emsg.reactions
    await fetched.delete()
    assert emsg.deleted and len(emu.channel_messages(emu.channel("general"))) == 4
    async with chan.typing():
        pass
    assert emu.events_of("typing")
    alice = await client.fetch_user(emu.user("alice").id)
    await alice.send("a DM")
    dm = await emu.wait_for_message(emu.dm_channel(emu.user("alice")), timeout=1)
    assert dm.content == "a DM" and dm.visible_to(emu.user("alice"))
    assert not emu.failures


async def test_command_sync_rules_and_gateway_resume(world):
    emu, client, api = world
    bad = [{"name": "x", "description": "d", "options": [
        {"type": 3, "name": "a", "description": "a"}, {"type": 3, "name": "b", "description": "b", "required": True}]}]
    status, body, _ = await api("PUT", f"/applications/{emu.application_id}/commands", body=bad)
    assert status == 400 and "Required options" in json.dumps(body)
    guild = emu.guild("Second Guild")
    status, body, _ = await api("PUT", f"/applications/{emu.application_id}/guilds/{guild.id}/commands",
                                body=[{"name": "local", "description": "guild only"}])
    assert status == 200 and body[0]["guild_id"] == str(guild.id)
    assert emu.commands.names(guild) == ["imagine", "local", "settings"]
    assert "local" not in emu.commands.names(emu.guild("Test Guild"))

    waiter = asyncio.create_task(client.wait_for("raw_reaction_add", timeout=5))
    await emu.drop_gateway(4000)  # resumable: discord.py reconnects and RESUMEs
    msg = await emu.send_message(emu.user("alice"), emu.channel("general"), "while the bot is away")
    await emu.add_reaction(emu.user("bob"), msg, "👍")
    payload = await waiter  # buffered in the session and replayed after RESUME
    assert payload.message_id == msg.id and payload.user_id == emu.user("bob").id
    assert emu.events_of("gateway.resume")[-1].data["ok"] is True
    assert [e.data["code"] for e in emu.events_of("gateway.disconnect")] == [4000]


async def test_component_deferred_update_dm_invoke_and_get_original(world):
    emu, _, api = world
    alice, chan = emu.user("alice"), emu.channel("general")
    status, body, _ = await api("POST", f"/channels/{chan.id}/messages", body={
        "content": "pick", "components": [{"type": 1, "components": [
            {"type": 2, "style": 1, "label": "Keep", "custom_id": "keep"},
            {"type": 2, "style": 5, "label": "Docs", "url": "https://example.com"}]}]})
    assert status == 200
    msg = emu.messages[int(body["id"])]
    assert [(c.custom_id, c.label) for c in msg.buttons] == [("keep", "Keep"), (None, "Docs")]
    it = await emu.click(alice, msg, "keep")
    assert (await api.callback(it, {"type": 6}))[0] == 200
    assert (await it.original(1)) is msg and it.deferred
    base = f"/webhooks/{emu.application_id}/{it.token}/messages/@original"
    status, body, _ = await api("PATCH", base, body={"content": "kept", "components": []}, auth=False)
    assert status == 200 and msg.content == "kept" and msg.components == [] and msg.edits == 1
    status, body, _ = await api("GET", base, auth=False)
    assert status == 200 and body["content"] == "kept"

    dm = emu.dm_channel(alice)
    it = await emu.invoke(alice, dm, "imagine", {"prompt": "in a DM"})
    status, body, _ = await api.callback(it, {"type": 4, "data": {"content": "dm reply"}})
    assert status == 200 and (await emu.wait_for_message(dm, timeout=1)).content == "dm reply"
    with pytest.raises(InvokeError, match="not a member"):
        await emu.invoke(emu.user("owner"), emu.channel("general", "Second Guild"), "imagine", {"prompt": "x"})
    with pytest.raises(InvokeError, match="integer"):
        await emu.invoke(alice, chan, "imagine", {"prompt": "x", "count": "two"})
    assert not emu.failures

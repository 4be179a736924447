"""A Discord emulator: REST v10 + gateway, close enough that an unmodified discord.py 2.x bot logs in.

It powers the test suite and ``python bot.py --sandbox``. Tests play the users (slash commands,
autocomplete, buttons, selects, modals, reactions, messages) and assert on what the bot posted. The
emulator enforces Discord's platform rules, so a bot that would fail on Discord fails here.

Start and point discord.py at it
--------------------------------
::

    from discord_emulator import Emulator, EmulatorSettings, configure_discord_py
    from discord_emulator.discordpy import run_discord_client

    emu = Emulator(EmulatorSettings(initial_response_timeout=3.0))   # default world built in
    await emu.start()              # port 0 by default
    emu.api_base                   # "http://127.0.0.1:PORT/api/v10"
    emu.gateway_url                # "ws://127.0.0.1:PORT/gateway"
    emu.bot_token, emu.application_id, emu.bot_user
    configure_discord_py(emu.api_base, emu.gateway_url)   # sets Route.BASE and DEFAULT_GATEWAY
    async with run_discord_client(bot, emu):              # start, wait for on_ready, close at the end
        ...
    await emu.stop()

``python -m discord_emulator --port 8765`` runs it alone, for a bot in another process.

Pytest: ``from tests.emulator_fixtures import emulator, make_emulator`` (``emulator``: started with
defaults, discord.py pointed at it, stopped after the test; ``await make_emulator(**settings)`` for
custom :class:`EmulatorSettings`).

The default world (ids are the same on every run)
-------------------------------------------------
``emu.guilds`` / ``emu.users`` are dicts by name, ``emu.channels`` a list; look-ups raise ``KeyError``
listing what exists::

    Test Guild (owner: owner): #general, #nsfw (age-restricted), #art;
        admin (Administrator role), mod (Manage Server), alice, bob, carol, the bot
    Second Guild (owner: carol): #general, #lounge; alice (Manage Server), bob, the bot

    guild = emu.guild("Test Guild")          # emu.guild() -> the first guild
    chan = guild.channel("general")          # or emu.channel("general", "Second Guild")
    alice = emu.user("alice"); dm = emu.dm_channel(alice)
    guild.base_permissions(user), guild.permissions_in(channel, user)   # Discord's algorithm
    emu.add_user/add_guild/add_role/add_member/add_channel(...)          # build more before start
    await emu.create_channel(guild, "new", nsfw=False)                   # CHANNEL_CREATE
    await emu.set_permissions(chan, deny=Perm.SEND_MESSAGES | Perm.ATTACH_FILES)  # bot by default;
        # CHANNEL_UPDATE is dispatched, and the bot's REST posts there get 403 / 50013
    await emu.set_member_roles(guild, user, roles)                       # GUILD_MEMBER_UPDATE

Users act
---------
All return at once (after dispatching); the bot answers asynchronously::

    it = await emu.invoke(alice, chan, "imagine", {"prompt": "a cat", "count": 2})
    it = await emu.invoke(admin, chan, "admin credits grant", {"user": bob, "amount": 5})
        # the path is resolved against the registered tree (subcommand groups included); options are
        # checked (unknown, required, type, choices, min/max); users/roles/channels and
        # emu.upload(data, "in.png", "image/png") values go out with ``resolved`` data, uploads are
        # served from the emulator's CDN. Commands hidden by default_member_permissions, NSFW commands
        # outside NSFW channels, and guild commands in DMs raise InvokeError, as Discord hides them.
    choices = await emu.autocomplete(alice, chan, "hypernet use", {"name": "ca"}, focused="name")
    it = await emu.click(alice, msg, "job:42:reroll")
    it = await emu.select(alice, msg, "style-pick", ["anime"])       # users/roles/channels for those selects
    it = await emu.submit_modal(alice, it_that_opened_the_modal, {"note": "text"})
    await emu.add_reaction(alice, msg, "🔄"); await emu.remove_reaction(alice, msg, "🔄")
    await emu.send_message(alice, chan, "hello")                       # MESSAGE_CREATE

An :class:`Interaction` ``it`` records the answer: ``it.acked``, ``it.response_type`` (4, 5, 6, 7, 8, 9),
``it.ephemeral``, ``it.deferred``, ``it.original_message``, ``it.followups``, ``it.choices``, ``it.modal``,
``it.failures``; ``await it.wait_acked(timeout)``, ``await it.original(timeout)`` (the response once it has
content; for 6/7 the component's message), ``await it.wait_followup(timeout)`` (next unseen follow-up).

Observe the bot
---------------
::

    msg = await emu.wait_for_message(chan, predicate=None, timeout=10, user=None)
        # next bot message posted in chan not returned before (a deferred response counts once filled;
        # ephemeral ones too; user=alice: only what alice can see). Non-matching ones are not consumed.
    await emu.wait_for_edit(msg, predicate=None, timeout=10)   # next edit / until predicate(msg) holds
    await emu.wait_for_delete(msg); await emu.wait_for_command("imagine"); await emu.wait_for_login()
    await emu.wait_until(lambda: something, timeout, "what")   # any condition (re-checked every 20 ms)
    msg.content, msg.embeds (dicts), msg.components / msg.buttons (flat: custom_id, label, style, url,
        emoji, disabled, options), msg.component(custom_id), msg.attachments (filename, size,
        content_type, width/height for PNGs, url), msg.reactions ({emoji: [User]}), msg.reaction_users(e),
        msg.flags, msg.ephemeral, msg.visible_to(user), msg.loading, msg.deleted, msg.edits, msg.interaction
    await emu.read_attachment(att) -> bytes
    emu.channel_messages(chan), emu.bot_messages(chan), emu.messages (by id)
    emu.commands.global_commands / .guild_commands[guild.id] / .names(guild) / .get("admin credits grant")
    emu.events (ordered log: rest, gateway.*, message.*, reaction.*, interaction*, commands.sync, typing,
        failure, ...), emu.events_of("rest.rate_limited")
    queue = emu.subscribe()    # every event from now on, as it happens (await queue.get()); emu.unsubscribe(queue)

Platform rules (sizes in EmulatorSettings, shrink them in tests)
----------------------------------------------------------------
Initial response within ``initial_response_timeout`` (3 s; late -> 404 10062, and an unanswered
interaction is recorded when the deadline passes); second initial response -> 400 40060; follow-ups and
edits for ``token_lifetime`` (15 min; then 401 50027 "Invalid Webhook Token"); follow-up before any
response -> 404 10015; a type-5 deferral may only carry the EPHEMERAL flag (64) and the first follow-up
after it fills the deferred message (its ephemerality decided by the deferral); ≤ ``max_files`` (10)
files -> 30015; each file ≤ ``attachment_size_limit`` (10 MiB, also sent as the interaction's
``attachment_size_limit``) and the request ≤ ``max_request_size`` (25 MiB) -> 413 40005; content ≤ 2000,
≤ 10 embeds, ≤ 6000 embed characters, embed field limits, custom_id 1-100 characters, unique custom_ids,
≤ 5 action rows, ≤ 25 autocomplete choices -> 400 50035 with Discord's nested ``errors``; missing
channel permissions -> 403 50013 (50001 without View Channel); editing another user's message -> 50005;
command sync validates names, descriptions, option order (required first), choices, nesting.
Every rule broken is in ``emu.failures`` (:class:`Failure`: status, code, message, route, errors,
interaction_id) and ``it.failures``; ``emu.assert_no_failures()`` raises listing them; ``emu.errors`` has
every error reply (also plain 404s). Endpoints the emulator lacks answer 404 and are recorded as failures.

``emu.inject_rate_limit("POST /channels/", count=2, retry_after=0.05, is_global=False, scope="user")``
answers the next matching requests (``"METHOD /path"`` after ``/api/v10``) with a 429 that discord.py
retries (``Via`` header, JSON ``retry_after``/``global``, ``X-RateLimit-Scope``).

Gateway
-------
TEXT JSON frames (compression ignored), HELLO, heartbeat ACK, IDENTIFY (wrong token -> close 4004;
privileged intents refused with close 4014 when ``allow_privileged_intents=False``), READY, one
GUILD_CREATE per guild (all members with the members intent, else just the bot; ``member_count`` matches
so discord.py requests no chunks; op 8 is answered anyway), RESUME (events missed while disconnected are
replayed, then RESUMED; unknown sessions get INVALID_SESSION), intent filtering of dispatches, message
content blanked without the message-content intent. INTERACTION_CREATE goes to the newest live session.
Test controls: ``emu.connected``, ``await emu.drop_gateway(4000)`` (client resumes),
``emu.request_reconnect()`` (op 7), ``emu.invalidate_sessions()`` (op 9).

Quirks for bot authors
----------------------
- Give discord.py ``guild_ready_timeout=0.05`` (or similar): ``on_ready`` fires that long after the
  last GUILD_CREATE; the default 2 s makes every start slow.
- ``configure_discord_py`` changes process-wide class attributes; call it before ``login``.
  ``run_discord_client``/the fixtures do it for you (the fixtures restore the old values).
- Synced commands are usable at once (no propagation delay); invoke before sync raises InvokeError:
  ``await emu.wait_for_command(name)`` after starting the bot.
- Only text channels and DMs exist: threads, voice, webhooks of channels, emojis of guilds are not
  emulated. Custom emoji reactions by the bot answer 10014 Unknown Emoji.
- No rate limit is applied unless injected, and no ``X-RateLimit-*`` headers are sent.
"""

from .commands import CommandRegistry, InvokeError
from .discordpy import configure_discord_py, reset_discord_py
from .emulator import Emulator, RateLimitInjection
from .models import (
    Attachment,
    Channel,
    Component,
    Event,
    Failure,
    Guild,
    Interaction,
    Member,
    Message,
    Overwrite,
    Perm,
    Role,
    Upload,
    User,
)
from .rules import ApiError
from .settings import EmulatorSettings

__all__ = [
    "ApiError", "Attachment", "Channel", "CommandRegistry", "Component", "Emulator", "EmulatorSettings", "Event",
    "Failure", "Guild", "Interaction", "InvokeError", "Member", "Message", "Overwrite", "Perm", "RateLimitInjection",
    "Role", "Upload", "User", "configure_discord_py", "reset_discord_py",
]

"""The Emulator: world state, server lifecycle, and the test-facing API."""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from . import rules
from .commands import CommandRegistry, InvokeError, build_command_data
from .gateway import Gateway
from .models import (
    AUTOCOMPLETE,
    CHANNEL_DM,
    CHANNEL_TEXT,
    DEFAULT_EVERYONE_PERMS,
    MESSAGE_COMPONENT,
    MESSAGE_FLAG_EPHEMERAL,
    MESSAGE_FLAG_LOADING,
    MODAL_SUBMIT,
    Attachment,
    Channel,
    Event,
    Failure,
    Guild,
    Interaction,
    Member,
    Message,
    Overwrite,
    Perm,
    Role,
    Snowflakes,
    User,
    emoji_payload,
    iso,
    walk_components,
)
from .rest import RestApi
from .settings import EmulatorSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

BOT_PERMS = (
    Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES | Perm.EMBED_LINKS | Perm.ATTACH_FILES | Perm.READ_MESSAGE_HISTORY
    | Perm.ADD_REACTIONS | Perm.USE_EXTERNAL_EMOJIS | Perm.USE_APPLICATION_COMMANDS | Perm.SEND_MESSAGES_IN_THREADS
)
DM_PERMS = (
    Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES | Perm.EMBED_LINKS | Perm.ATTACH_FILES | Perm.READ_MESSAGE_HISTORY
    | Perm.ADD_REACTIONS | Perm.USE_EXTERNAL_EMOJIS | Perm.USE_APPLICATION_COMMANDS
)


@dataclass
class RateLimitInjection:
    route_substring: str
    count: int
    retry_after: float
    is_global: bool
    scope: str


@dataclass
class ErrorInjection:
    route_substring: str
    count: int
    status: int


@dataclass
class RequestHook:
    """``callback(route)`` runs synchronously when a matching request arrives (``after``: once it is handled,
    before the answer leaves); it stays until it returns True."""

    route_substring: str
    callback: Callable[[str], bool]
    after: bool


@dataclass
class UploadedFile:
    """A file part of a multipart request (``files[n]``)."""

    index: int
    filename: str
    data: bytes
    content_type: str | None

    @property
    def size(self) -> int:
        return len(self.data)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


class Emulator:
    """A Discord API + gateway emulator for one bot (see the package docstring for the API tour)."""

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        self.ids = Snowflakes()
        self.users: dict[str, User] = {}
        self.guilds: dict[str, Guild] = {}
        self.channels: list[Channel] = []
        self.messages: dict[int, Message] = {}
        self.interactions: dict[int, Interaction] = {}
        self.commands = CommandRegistry()
        self.events: list[Event] = []
        self.failures: list[Failure] = []
        self.errors: list[Failure] = []  # every error reply, rule-breaking or not
        self.rate_limits: list[RateLimitInjection] = []
        self.injected_errors: list[ErrorInjection] = []
        self.request_hooks: list[RequestHook] = []
        self.files: dict[int, Attachment] = {}  # the CDN
        self._dm_channels: dict[int, Channel] = {}
        self._by_token: dict[str, Interaction] = {}
        self._consumed: set[int] = set()  # message ids already returned by wait_for_message
        self._posted = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._subscribers: list[asyncio.Queue[Event]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.gateway = Gateway(self)
        self.rest = RestApi(self)

        self.bot_user = User(self.ids.world(), self.settings.bot_name, bot=True)
        self.users[self.bot_user.name] = self.bot_user
        if self.settings.default_world:
            from .world import build_default_world

            build_default_world(self)

    # -- identity --------------------------------------------------------------------------------------------

    @property
    def application_id(self) -> int:
        return self.bot_user.id

    @property
    def bot_token(self) -> str:
        return self.settings.bot_token

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the emulator is not started: await emu.start() first")
        return f"http://{self.settings.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}/gateway"

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> Emulator:
        app = web.Application(client_max_size=self.settings.max_request_size + 1024 * 1024, middlewares=[self.rest.middleware])
        self.rest.register(app)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self.rest.cdn)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        for att in self.files.values():
            att.url = self._cdn_url(att)
        self._log("emulator.start", api_base=self.api_base)
        return self

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._log("emulator.stop")

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def configure_discord_py(self) -> None:
        """Point discord.py (this process) at this emulator."""
        from .discordpy import configure_discord_py

        configure_discord_py(self.api_base, self.gateway_url)

    # -- world lookups and building -----------------------------------------------------------------------------

    def user(self, name: str) -> User:
        try:
            return self.users[name]
        except KeyError:
            raise KeyError(f"no user {name!r}; have {list(self.users)}") from None

    def guild(self, name: str | None = None) -> Guild:
        """The guild called ``name`` (default: the first one, "Test Guild" in the default world)."""
        if name is None:
            return next(iter(self.guilds.values()))
        try:
            return self.guilds[name]
        except KeyError:
            raise KeyError(f"no guild {name!r}; have {list(self.guilds)}") from None

    def channel(self, name: str, guild: str | Guild | None = None) -> Channel:
        if not isinstance(guild, Guild):
            guild = self.guild(guild)
        return guild.channel(name)

    def add_user(self, name: str, *, bot: bool = False) -> User:
        user = User(self.ids.world(), name, bot=bot)
        self.users[name] = user
        return user

    def add_guild(self, name: str, owner: User) -> Guild:
        guild = Guild(self.ids.world(), name, owner)
        guild.roles.append(Role(guild.id, "@everyone", int(DEFAULT_EVERYONE_PERMS)))
        self.guilds[name] = guild
        bot_role = self.add_role(guild, self.bot_user.name, int(BOT_PERMS), managed=True)
        bot_role.bot_id = self.bot_user.id
        guild.members[self.bot_user.id] = Member(self.bot_user, [bot_role])
        guild.members[owner.id] = Member(owner)
        return guild

    def add_role(self, guild: Guild, name: str, permissions: int, *, managed: bool = False) -> Role:
        role = Role(self.ids.world(), name, int(permissions), position=len(guild.roles), managed=managed)
        guild.roles.append(role)
        return role

    def add_member(self, guild: Guild, user: User, roles: list[Role] | None = None) -> Member:
        member = Member(user, list(roles or []))
        guild.members[user.id] = member
        return member

    def add_channel(self, guild: Guild, name: str, *, nsfw: bool = False, topic: str | None = None) -> Channel:
        """Add a text channel to the world (use :meth:`create_channel` once a bot is connected)."""
        channel = Channel(self.ids.world(), name, CHANNEL_TEXT, guild, nsfw=nsfw, topic=topic, position=len(guild.channels))
        guild.channels.append(channel)
        self.channels.append(channel)
        return channel

    async def create_channel(self, guild: Guild, name: str, *, nsfw: bool = False, overwrites: list[Overwrite] | None = None) -> Channel:
        """Create a text channel and tell the bot (CHANNEL_CREATE)."""
        channel = self.add_channel(guild, name, nsfw=nsfw)
        channel.overwrites = list(overwrites or [])
        self.gateway.dispatch("CHANNEL_CREATE", channel.payload(), guild_id=guild.id)
        return channel

    async def set_permissions(
        self, channel: Channel, target: User | Role | None = None, *, allow: int = 0, deny: int = 0
    ) -> Overwrite:
        """Set the overwrite for ``target`` (default: the bot) in ``channel`` and dispatch CHANNEL_UPDATE.

        ``await emu.set_permissions(chan, deny=Perm.SEND_MESSAGES | Perm.ATTACH_FILES)`` makes a channel where
        the bot may not post; REST calls there then answer 403 / 50013.
        """
        target = target or self.bot_user
        kind = 0 if isinstance(target, Role) else 1
        channel.overwrites = [o for o in channel.overwrites if o.id != target.id]
        ow = Overwrite(target.id, kind, int(allow), int(deny))
        channel.overwrites.append(ow)
        if channel.guild is not None:
            self.gateway.dispatch("CHANNEL_UPDATE", channel.payload(), guild_id=channel.guild.id)
        return ow

    async def set_member_roles(self, guild: Guild, user: User, roles: list[Role]) -> None:
        member = guild.members[user.id]
        member.roles = list(roles)
        data = {**member.payload(), "guild_id": str(guild.id)}
        self.gateway.dispatch("GUILD_MEMBER_UPDATE", data, guild_id=guild.id)

    def bot_permissions(self, channel: Channel) -> int:
        if channel.guild is None:
            return int(DM_PERMS)
        return channel.guild.permissions_in(channel, self.bot_user)

    def bot_guilds(self) -> list[Guild]:
        return [g for g in self.guilds.values() if self.bot_user.id in g.members]

    def dm_channel(self, user: User) -> Channel:
        """The DM channel between the bot and ``user`` (created on first use)."""
        channel = self._dm_channels.get(user.id)
        if channel is None:
            channel = Channel(self.ids.new(), f"dm-{user.name}", CHANNEL_DM, None, recipient=user)
            self._dm_channels[user.id] = channel
            self.channels.append(channel)
        return channel

    def _guild_by_id(self, guild_id: int) -> Guild | None:
        return next((g for g in self.guilds.values() if g.id == guild_id), None)

    def _channel_by_id(self, channel_id: int) -> Channel | None:
        return next((c for c in self.channels if c.id == channel_id), None)

    def _user_by_id(self, user_id: int) -> User | None:
        return next((u for u in self.users.values() if u.id == user_id), None)

    def _guild_create_payload(self, guild: Guild, *, members: bool) -> dict[str, Any]:
        shown = list(guild.members.values()) if members else [guild.members[self.bot_user.id]]
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(guild.owner.id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [r.payload() for r in guild.roles],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "max_members": 500000,
            "joined_at": _iso_now(),
            "large": False,
            "unavailable": False,
            "member_count": len(guild.members),
            "members": [m.payload() for m in shown],
            "channels": [c.payload() for c in guild.channels],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    # -- the log, failures and waiting ---------------------------------------------------------------------------

    def _log(self, kind: str, **data: Any) -> Event:
        event = Event(len(self.events) + 1, kind, data)
        self.events.append(event)
        log.debug("%r", event)
        for queue in self._subscribers:
            queue.put_nowait(event)
        return event

    def subscribe(self) -> asyncio.Queue[Event]:
        """A queue that receives every event logged from now on, until :meth:`unsubscribe`."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._subscribers.remove(queue)

    def events_of(self, kind: str) -> list[Event]:
        """Events whose kind equals ``kind`` or starts with ``kind + "."``."""
        return [e for e in self.events if e.kind == kind or e.kind.startswith(kind + ".")]

    def _failure(
        self, status: int, code: int, message: str, route: str, errors: dict[str, Any] | None = None,
        interaction: Interaction | None = None, *, rule: bool = True,
    ) -> Failure:
        failure = Failure(status, code, message, route, errors, interaction.id if interaction else None)
        self.errors.append(failure)
        if rule:
            self.failures.append(failure)
            if interaction is not None:
                interaction.failures.append(failure)
            log.warning("bot broke a Discord rule: %s", failure)
        self._log("failure" if rule else "error", status=status, code=code, message=message, route=route)
        self._notify()
        return failure

    def assert_no_failures(self) -> None:
        """Raise AssertionError listing every broken rule (call at the end of a test)."""
        if self.failures:
            raise AssertionError("the bot broke Discord rules:\n" + "\n".join(f"  {f}" for f in self.failures))

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(self, check: Callable[[], T | None], timeout: float | None = 10.0, what: str = "a condition") -> T:
        """Re-run ``check`` after every emulator state change (and every 20 ms, for state outside the
        emulator such as the bot's) until it returns something truthy; return that."""
        timeout = 10.0 if timeout is None else timeout
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                hint = ""
                if self.failures:
                    hint = "; failures so far:\n" + "\n".join(f"  {f}" for f in self.failures[-10:])
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{hint}")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, min(remaining, 0.02))
            except TimeoutError:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    # -- gateway status ------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a bot session is identified on a live websocket."""
        return bool(self.gateway.live_sessions())

    async def wait_for_login(self, timeout: float = 10.0) -> None:
        """Wait until a bot has IDENTIFY'd (GUILD_CREATEs are sent right after)."""
        await self.wait_until(lambda: self.connected, timeout, "a bot to log in to the gateway")

    async def wait_for_command(self, name: str, guild: Guild | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until ``name`` (e.g. ``"admin credits grant"``) is registered (globally or in ``guild``)."""

        def check() -> dict[str, Any] | None:
            try:
                return self.commands.get(name, guild)
            except KeyError:
                return None

        return await self.wait_until(check, timeout, f"command {name!r} to be registered")

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the bot's websocket(s); with a resumable code discord.py reconnects and RESUMEs."""
        await self.gateway.drop(code)

    def request_reconnect(self) -> None:
        """Send op 7 RECONNECT (discord.py reconnects and resumes)."""
        self.gateway.request_reconnect()

    def invalidate_sessions(self) -> None:
        """Send op 9 INVALID_SESSION and forget sessions (discord.py re-IDENTIFYs)."""
        self.gateway.invalidate_sessions()

    # -- rate limits -----------------------------------------------------------------------------------------------

    def inject_rate_limit(
        self, route_substring: str, count: int = 1, retry_after: float = 0.05, *, is_global: bool = False,
        scope: str = "user",
    ) -> RateLimitInjection:
        """Answer the next ``count`` requests whose ``"METHOD /path"`` contains ``route_substring`` with a 429.

        The path is the one after ``/api/v10``, e.g. ``"POST /channels/123/messages"``.
        """
        injection = RateLimitInjection(route_substring, count, retry_after, is_global, scope)
        self.rate_limits.append(injection)
        return injection

    def _take_rate_limit(self, route: str) -> RateLimitInjection | None:
        for injection in self.rate_limits:
            if injection.count > 0 and injection.route_substring in route:
                injection.count -= 1
                return injection
        return None

    def inject_error(self, route_substring: str, count: int = 1, status: int = 503) -> ErrorInjection:
        """Answer the next ``count`` requests whose ``"METHOD /path"`` contains ``route_substring`` with ``status``
        (a Discord outage: 5xx; discord.py retries 500, 502 and 504 itself before giving up)."""
        injection = ErrorInjection(route_substring, count, status)
        self.injected_errors.append(injection)
        return injection

    def _take_error(self, route: str) -> ErrorInjection | None:
        for injection in self.injected_errors:
            if injection.count > 0 and injection.route_substring in route:
                injection.count -= 1
                return injection
        return None

    def on_request(self, route_substring: str, callback: Callable[[str], bool], *, after: bool = False) -> RequestHook:
        """Run ``callback(route)`` synchronously on each matching REST request — before it is handled, or with
        ``after`` once it is handled but before its answer is sent (e.g. to kill the bot at that moment) — until
        it returns True."""
        hook = RequestHook(route_substring, callback, after)
        self.request_hooks.append(hook)
        return hook

    async def delete_channel(self, channel: Channel) -> None:
        """Delete a guild channel (CHANNEL_DELETE); REST calls on it then answer 404 / 10003."""
        self.channels.remove(channel)
        if channel.guild is not None:
            channel.guild.channels.remove(channel)
            self.gateway.dispatch("CHANNEL_DELETE", channel.payload(), guild_id=channel.guild.id)

    async def redeliver_on_resume(self, event: str) -> None:
        """Deliver the latest ``event`` again: the bot's gateway drops, it RESUMEs, and the emulator replays from
        that event although the bot had it (Discord's delivery is at least once)."""
        self.gateway.replay_on_resume(event)
        await self.drop_gateway(4000)

    # -- CDN -----------------------------------------------------------------------------------------------------

    def _cdn_url(self, att: Attachment) -> str:
        if self.port is None:
            return ""
        return f"{self.base_url}/attachments/{att.channel_id}/{att.id}/{quote(att.filename)}"

    def _store_file(
        self, filename: str, data: bytes, content_type: str | None, channel_id: int,
        *, description: str | None = None, ephemeral: bool = False,
    ) -> Attachment:
        guessed = mimetypes.guess_type(filename)[0]
        if content_type in (None, "", "application/octet-stream") and guessed:
            content_type = guessed
        att = Attachment(self.ids.new(), filename, data, content_type, description, ephemeral, channel_id=channel_id)
        size = _png_size(data)
        if size:
            att.width, att.height = size
        att.url = self._cdn_url(att)
        self.files[att.id] = att
        return att

    def upload(self, data: bytes, filename: str, content_type: str | None = None) -> Attachment:
        """A file a test user attaches to an attachment option (served from the emulator's CDN)."""
        return self._store_file(filename, data, content_type, 0, ephemeral=True)

    async def read_attachment(self, attachment: Attachment) -> bytes:
        """The bytes of an attachment (what a GET of its URL returns)."""
        return self.files[attachment.id].data

    # -- messages ----------------------------------------------------------------------------------------------------

    def channel_messages(
        self, channel: Channel, *, include_ephemeral: bool = False, include_deleted: bool = False
    ) -> list[Message]:
        """Messages of ``channel``, oldest first."""
        return [
            m for m in self.messages.values()
            if m.channel is channel and (include_deleted or not m.deleted) and (include_ephemeral or not m.ephemeral)
        ]

    def bot_messages(self, channel: Channel | None = None) -> list[Message]:
        return [
            m for m in self.messages.values()
            if m.author is self.bot_user and not m.deleted and (channel is None or m.channel is channel)
        ]

    async def wait_for_message(
        self,
        channel: Channel,
        predicate: Callable[[Message], bool] | None = None,
        timeout: float = 10.0,
        *,
        user: User | None = None,
        author: User | None = None,
    ) -> Message:
        """The next bot message posted in ``channel`` that no earlier call returned.

        "Posted" means it has content: a deferred response counts once the bot fills it in. Ephemeral
        messages count too; pass ``user`` to only see what that user sees. ``author`` defaults to the bot.
        Non-matching messages are not consumed, so a later call with another predicate can still get them.
        """
        author = author or self.bot_user

        def check() -> Message | None:
            candidates = sorted(
                (m for m in self.messages.values()
                 if m.channel is channel and m.author is author and m.posted_seq and m.id not in self._consumed
                 and not m.deleted and (user is None or m.visible_to(user))),
                key=lambda m: m.posted_seq,
            )
            for msg in candidates:
                if predicate is None or predicate(msg):
                    self._consumed.add(msg.id)
                    return msg
            return None

        return await self.wait_until(check, timeout, f"a new message by {author.name} in #{channel.name}")

    async def wait_for_edit(
        self, message: Message, predicate: Callable[[Message], bool] | None = None, timeout: float = 10.0
    ) -> Message:
        """Without ``predicate``: wait for the next edit of ``message``. With it: wait until
        ``predicate(message)`` holds (checked now and after every change)."""
        start = message.edits

        def check() -> Message | None:
            if predicate is not None:
                return message if predicate(message) else None
            return message if message.edits > start else None

        return await self.wait_until(check, timeout, f"an edit of message {message.id}")

    async def wait_for_delete(self, message: Message, timeout: float = 10.0) -> Message:
        return await self.wait_until(lambda: message if message.deleted else None, timeout, f"deletion of {message.id}")

    def _new_attachments(
        self, payload: dict[str, Any], files: list[UploadedFile], channel: Channel, existing: list[Attachment] | None,
        prefix: list[str | int],
    ) -> list[Attachment]:
        """Apply Discord's ``attachments`` array: keep listed existing ones, add uploaded ``files[n]``."""
        by_index = {f.index: f for f in files}
        used: set[int] = set()
        result: list[Attachment] = []
        ephemeral = bool((payload.get("flags") or 0) & MESSAGE_FLAG_EPHEMERAL)
        if "attachments" in payload and payload["attachments"] is not None:
            current = {a.id: a for a in existing or []}
            for i, entry in enumerate(payload["attachments"]):
                try:
                    att_id = int(entry["id"])
                except (KeyError, TypeError, ValueError):
                    raise rules.form_error(prefix + ["attachments", i, "id"], "BASE_TYPE_REQUIRED", "This field is required") from None
                if att_id in current:
                    result.append(current[att_id])
                elif att_id in by_index:
                    f = by_index[att_id]
                    used.add(att_id)
                    name = entry.get("filename") or f.filename
                    result.append(self._store_file(name, f.data, f.content_type, channel.id,
                                                   description=entry.get("description"), ephemeral=ephemeral))
                else:
                    raise rules.form_error(prefix + ["attachments", i, "id"], "ATTACHMENT_NOT_FOUND",
                                           f"Unknown attachment id {att_id}")
        else:
            result = list(existing or [])
        for f in files:
            if f.index not in used:
                result.append(self._store_file(f.filename, f.data, f.content_type, channel.id, ephemeral=ephemeral))
        if len(result) > self.settings.max_files:
            raise rules.too_many_attachments(self.settings.max_files)
        return result

    def _create_message(
        self,
        channel: Channel,
        author: User,
        payload: dict[str, Any],
        files: list[UploadedFile],
        *,
        interaction: Interaction | None = None,
        loading: bool = False,
        ephemeral_for: User | None = None,
        prefix: list[str | int] | None = None,
    ) -> Message:
        flags = int(payload.get("flags") or 0)
        msg = Message(
            id=self.ids.new(),
            channel=channel,
            author=author,
            content=str(payload.get("content") or ""),
            embeds=list(payload.get("embeds") or []),
            raw_components=list(payload.get("components") or []),
            flags=(flags & ~MESSAGE_FLAG_LOADING) | (MESSAGE_FLAG_LOADING if loading else 0),
            tts=bool(payload.get("tts")),
            ephemeral_for=ephemeral_for,
            interaction=interaction,
        )
        if ephemeral_for is not None:
            msg.flags |= MESSAGE_FLAG_EPHEMERAL
        if interaction is not None:
            msg.type = 20 if interaction.type == 2 else 0
        ref = payload.get("message_reference")
        if ref and ref.get("message_id"):
            target = self.messages.get(int(ref["message_id"]))
            if target is None or target.deleted or target.channel is not channel:
                if ref.get("fail_if_not_exists", True):
                    raise rules.form_error(["message_reference"], "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
            else:
                msg.reference_id = target.id
                msg.type = 19
        msg.attachments = self._new_attachments(payload, files, channel, None, prefix or [])
        if not loading:
            self._posted += 1
            msg.posted_seq = self._posted
        self.messages[msg.id] = msg
        self._log("message.create", id=msg.id, channel=channel.name, author=author.name, ephemeral=msg.ephemeral,
                  loading=loading, content=msg.content[:80], files=[a.filename for a in msg.attachments])
        if not msg.ephemeral:
            self._dispatch_message("MESSAGE_CREATE", msg)
        self._notify()
        return msg

    def _edit_message(
        self, msg: Message, payload: dict[str, Any], files: list[UploadedFile], prefix: list[str | int] | None = None
    ) -> Message:
        if "content" in payload:
            msg.content = str(payload["content"] or "")
        if "embeds" in payload:
            msg.embeds = list(payload["embeds"] or [])
        if "components" in payload:
            msg.raw_components = list(payload["components"] or [])
        if "flags" in payload and payload["flags"] is not None:
            keep = msg.flags & (MESSAGE_FLAG_EPHEMERAL | (1 << 15))
            msg.flags = keep | (int(payload["flags"]) & (1 << 2))  # only SUPPRESS_EMBEDS is editable
        if "attachments" in payload or files:
            msg.attachments = self._new_attachments(payload, files, msg.channel, msg.attachments, prefix or [])
        was_loading = msg.loading
        msg.flags &= ~MESSAGE_FLAG_LOADING
        if was_loading:
            self._posted += 1
            msg.posted_seq = self._posted
        else:
            msg.edited_at = time.time()
        msg.edits += 1
        self._log("message.update", id=msg.id, channel=msg.channel.name, content=msg.content[:80],
                  files=[a.filename for a in msg.attachments], filled_deferral=was_loading)
        if not msg.ephemeral:
            self._dispatch_message("MESSAGE_UPDATE", msg)
        self._notify()
        return msg

    def _delete_message(self, msg: Message) -> None:
        msg.deleted = True
        self._log("message.delete", id=msg.id, channel=msg.channel.name)
        if not msg.ephemeral:
            data = {"id": str(msg.id), "channel_id": str(msg.channel.id)}
            if msg.guild is not None:
                data["guild_id"] = str(msg.guild.id)
            self.gateway.dispatch("MESSAGE_DELETE", data, guild_id=msg.guild.id if msg.guild else None)
        self._notify()

    def _message_payload(self, msg: Message) -> dict[str, Any]:
        return msg.payload(viewer_id=self.bot_user.id, application_id=self.application_id)

    def _dispatch_message(self, event: str, msg: Message) -> None:
        data = self._message_payload(msg)
        guild = msg.guild
        if guild is not None:
            member = guild.member(msg.author)
            if member is not None:
                data["member"] = {k: v for k, v in member.payload().items() if k != "user"}
        redacted = None
        if msg.author is not self.bot_user and guild is not None and f"<@{self.bot_user.id}>" not in msg.content:
            redacted = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
        self.gateway.dispatch(event, data, guild_id=guild.id if guild else None, redacted=redacted)

    async def send_message(self, user: User, channel: Channel, content: str = "", *, attachments: list[Attachment] | None = None) -> Message:
        """A test user posts a message (dispatched as MESSAGE_CREATE)."""
        msg = self._create_message(channel, user, {"content": content}, [])
        for att in attachments or []:
            att.channel_id, att.ephemeral = channel.id, False
            msg.attachments.append(att)
        return msg

    # -- reactions -------------------------------------------------------------------------------------------------

    def _reaction_event(self, msg: Message, user: User, emoji: str, add: bool) -> None:
        data: dict[str, Any] = {
            "user_id": str(user.id),
            "channel_id": str(msg.channel.id),
            "message_id": str(msg.id),
            "emoji": emoji_payload(emoji),
            "burst": False,
            "burst_colors": [],
            "type": 0,
        }
        guild = msg.guild
        if guild is not None:
            data["guild_id"] = str(guild.id)
            if add and guild.member(user) is not None:
                data["member"] = guild.members[user.id].payload()
        if add:
            data["message_author_id"] = str(msg.author.id)
        self._log("reaction.add" if add else "reaction.remove", message=msg.id, user=user.name, emoji=emoji)
        self.gateway.dispatch("MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", data,
                              guild_id=guild.id if guild else None)
        self._notify()

    def _add_reaction(self, msg: Message, user: User, emoji: str) -> bool:
        users = msg.reactions.setdefault(emoji, [])
        if any(u.id == user.id for u in users):
            return False
        users.append(user)
        self._reaction_event(msg, user, emoji, True)
        return True

    def _remove_reaction(self, msg: Message, user: User, emoji: str) -> bool:
        users = msg.reactions.get(emoji, [])
        if not any(u.id == user.id for u in users):
            return False
        msg.reactions[emoji] = [u for u in users if u.id != user.id]
        if not msg.reactions[emoji]:
            del msg.reactions[emoji]
        self._reaction_event(msg, user, emoji, False)
        return True

    async def add_reaction(self, user: User, message: Message, emoji: str) -> None:
        """``user`` reacts to ``message`` (dispatches MESSAGE_REACTION_ADD)."""
        self._check_can_see(user, message)
        self._add_reaction(message, user, emoji)

    async def remove_reaction(self, user: User, message: Message, emoji: str) -> None:
        self._check_can_see(user, message)
        self._remove_reaction(message, user, emoji)

    def _check_can_see(self, user: User, message: Message) -> None:
        if message.deleted:
            raise InvokeError(f"message {message.id} is deleted")
        if not message.visible_to(user):
            raise InvokeError(f"{user.name} cannot see message {message.id}")

    # -- interactions ------------------------------------------------------------------------------------------------

    def _new_interaction(
        self, itype: int, user: User, channel: Channel, data: dict[str, Any], *,
        command_name: str | None = None, source: Message | None = None,
    ) -> Interaction:
        if not self.connected:
            raise RuntimeError("no bot is connected to the emulator's gateway (await emu.wait_for_login() first)")
        if channel.guild is not None and channel.guild.member(user) is None:
            raise InvokeError(f"{user.name} is not a member of {channel.guild.name}")
        it = Interaction(
            id=self.ids.new(), token=f"emu-{secrets.token_urlsafe(24)}", type=itype, user=user, channel=channel,
            data=data, created_at=time.monotonic(), emulator=self, command_name=command_name, source_message=source,
        )
        self.interactions[it.id] = it
        self._by_token[it.token] = it
        sessions = self.gateway.live_sessions()
        self.gateway.dispatch("INTERACTION_CREATE", self._interaction_payload(it), only=sessions[-1])
        self._log("interaction", id=it.id, what=it.describe())
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self.settings.initial_response_timeout, self._check_acked, it))
        return it

    def _check_acked(self, it: Interaction) -> None:
        if not it.acked:
            timeout = self.settings.initial_response_timeout
            seen = "'Loading options failed'" if it.type == AUTOCOMPLETE else "'This interaction failed'"
            self._failure(0, 10062, f"interaction not acknowledged within {timeout:g}s: the user sees {seen}",
                          f"INTERACTION {it.describe()}", interaction=it)

    def _interaction_payload(self, it: Interaction) -> dict[str, Any]:
        channel, guild = it.channel, it.channel.guild
        data: dict[str, Any] = {
            "id": str(it.id),
            "application_id": str(self.application_id),
            "type": it.type,
            "data": it.data,
            "token": it.token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": {**channel.payload(), "permissions": str(self._user_permissions(it.user, channel))},
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": it.integration_owners(),
            "context": 0 if guild else 1,
            "attachment_size_limit": self.settings.attachment_size_limit,
            "app_permissions": str(self.bot_permissions(channel)),
        }
        if guild is not None:
            data["guild_id"] = str(guild.id)
            data["guild"] = {"id": str(guild.id), "locale": "en-US", "features": []}
            data["guild_locale"] = "en-US"
            data["member"] = guild.members[it.user.id].payload(permissions=guild.permissions_in(channel, it.user))
        else:
            data["user"] = it.user.payload()
        if it.source_message is not None:
            data["message"] = self._message_payload(it.source_message)
        return data

    def _user_permissions(self, user: User, channel: Channel) -> int:
        return channel.guild.permissions_in(channel, user) if channel.guild else int(DM_PERMS)

    async def invoke(
        self, user: User, channel: Channel, command: str, options: dict[str, Any] | None = None
    ) -> Interaction:
        """``user`` runs the slash command ``command`` (``"imagine"`` or ``"admin credits grant"``) in ``channel``.

        Options are checked against the registered command (names, types, required, choices, ranges);
        users/channels/roles/``emu.upload(...)`` values are sent with ``resolved`` data.
        """
        built = build_command_data(self, user, channel, command, dict(options or {}))
        return self._new_interaction(2, user, channel, built.data, command_name=built.full_name)

    async def autocomplete(
        self, user: User, channel: Channel, command: str, options: dict[str, Any], focused: str,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Send an autocomplete interaction (``focused`` is the option being typed) and return the bot's choices."""
        built = build_command_data(self, user, channel, command, dict(options), focused=focused)
        it = self._new_interaction(AUTOCOMPLETE, user, channel, built.data, command_name=built.full_name)
        await it.wait_acked(self.settings.initial_response_timeout + 0.5 if timeout is None else timeout)
        if it.choices is None:
            raise AssertionError(f"the bot answered autocomplete with type {it.response_type}, not 8; failures: {it.failures}")
        return it.choices

    async def click(self, user: User, message: Message, custom_id: str) -> Interaction:
        """``user`` clicks the button ``custom_id`` of ``message``."""
        self._check_can_see(user, message)
        comp = message.component(custom_id)
        if not comp.is_button:
            raise InvokeError(f"{custom_id!r} is not a button")
        if comp.disabled:
            raise InvokeError(f"button {custom_id!r} is disabled")
        data = {"custom_id": custom_id, "component_type": 2}
        return self._new_interaction(MESSAGE_COMPONENT, user, message.channel, data, source=message)

    async def select(self, user: User, message: Message, custom_id: str, values: list[Any]) -> Interaction:
        """``user`` picks ``values`` in the select menu ``custom_id`` (strings, or users/roles/channels)."""
        self._check_can_see(user, message)
        comp = message.component(custom_id)
        if not comp.is_select:
            raise InvokeError(f"{custom_id!r} is not a select menu")
        if comp.disabled:
            raise InvokeError(f"select {custom_id!r} is disabled")
        if not comp.min_values <= len(values) <= comp.max_values:
            raise InvokeError(f"select {custom_id!r} takes {comp.min_values}..{comp.max_values} values, got {len(values)}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": comp.type}
        if comp.type == 3:
            allowed = [o["value"] for o in comp.options]
            bad = [v for v in values if v not in allowed]
            if bad:
                raise InvokeError(f"{bad} are not options of {custom_id!r}: {allowed}")
            data["values"] = list(values)
        else:
            resolved: dict[str, dict[str, Any]] = {}
            ids = []
            for v in values:
                ids.append(str(v.id))
                if isinstance(v, User):
                    resolved.setdefault("users", {})[str(v.id)] = v.payload()
                    member = message.guild.member(v) if message.guild else None
                    if member is not None:
                        resolved.setdefault("members", {})[str(v.id)] = {k: x for k, x in member.payload().items() if k != "user"}
                elif isinstance(v, Role):
                    resolved.setdefault("roles", {})[str(v.id)] = v.payload()
                elif isinstance(v, Channel):
                    resolved.setdefault("channels", {})[str(v.id)] = {**v.payload(), "permissions": "0"}
            data.update(values=ids, resolved=resolved)
        return self._new_interaction(MESSAGE_COMPONENT, user, message.channel, data, source=message)

    async def submit_modal(self, user: User, opened_by: Interaction, values: dict[str, str]) -> Interaction:
        """``user`` submits the modal the bot opened in answer to ``opened_by`` (text inputs by custom_id)."""
        modal = opened_by.modal
        if modal is None:
            raise InvokeError(f"the bot did not open a modal for {opened_by.describe()}")

        def answer(comp: dict[str, Any]) -> dict[str, Any] | None:
            if comp["type"] == 1:
                kids = [a for a in (answer(c) for c in comp.get("components", [])) if a]
                return {"type": 1, "components": kids}
            if comp["type"] == 18:
                inner = answer(comp["component"])
                return {"type": 18, "component": inner} if inner else None
            if comp["type"] == 4:
                return {"type": 4, "custom_id": comp["custom_id"], "value": values.get(comp["custom_id"], "")}
            if comp["type"] == 3:
                return {"type": 3, "custom_id": comp["custom_id"], "values": list(values.get(comp["custom_id"], []))}
            return None

        known = {c.get("custom_id") for c in walk_components(modal.get("components", []))}
        unknown = set(values) - known
        if unknown:
            raise InvokeError(f"modal {modal['custom_id']!r} has no inputs {sorted(unknown)}; has {sorted(k for k in known if k)}")
        data = {"custom_id": modal["custom_id"], "components": [a for a in map(answer, modal.get("components", [])) if a]}
        return self._new_interaction(MODAL_SUBMIT, user, opened_by.channel, data, source=opened_by.source_message)


def _iso_now() -> str:
    return iso(time.time()) or ""

"""Plain dataclasses holding the emulator's world, and their Discord JSON payloads.

Every object here is *live*: the emulator mutates it in place, so a test that holds a
:class:`Message` sees later edits, reactions and deletion without re-fetching it.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
# Fixed instant (2024-01-01) for world objects, so guild/user/channel ids are identical on every run
# (the bot's database keys survive an emulator restart in --sandbox).
WORLD_EPOCH_MS = 1704067200000


class Perm(enum.IntFlag):
    """Discord permission bits (the subset a bot of this kind cares about)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    CHANGE_NICKNAME = 1 << 26
    MANAGE_ROLES = 1 << 28
    MANAGE_WEBHOOKS = 1 << 29
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38


ALL_PERMISSIONS = (1 << 50) - 1

DEFAULT_EVERYONE_PERMS = (
    Perm.CREATE_INSTANT_INVITE
    | Perm.ADD_REACTIONS
    | Perm.VIEW_CHANNEL
    | Perm.SEND_MESSAGES
    | Perm.EMBED_LINKS
    | Perm.ATTACH_FILES
    | Perm.READ_MESSAGE_HISTORY
    | Perm.USE_EXTERNAL_EMOJIS
    | Perm.CONNECT
    | Perm.SPEAK
    | Perm.CHANGE_NICKNAME
    | Perm.USE_APPLICATION_COMMANDS
    | Perm.SEND_MESSAGES_IN_THREADS
)

MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7


class Snowflakes:
    """Strictly increasing snowflake ids carrying a real timestamp (discord.py derives datetimes from them)."""

    def __init__(self) -> None:
        self._last = 0
        self._world = itertools.count(1)

    def new(self) -> int:
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(self._last + 1, candidate)
        return self._last

    def world(self) -> int:
        """Deterministic id for objects of the built-in world."""
        return ((WORLD_EPOCH_MS - DISCORD_EPOCH_MS) << 22) + next(self._world)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(eq=False)
class User:
    id: int
    name: str
    bot: bool = False
    global_name: str | None = None
    dms_open: bool = True  # False: the bot's DMs to this user answer 403 / 50007

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.global_name or self.name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def __repr__(self) -> str:
        return f"<User {self.name} id={self.id}>"


@dataclass(eq=False)
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0
    color: int = 0
    managed: bool = False
    bot_id: int | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(int(self.permissions)),
            "position": self.position,
            "color": self.color,
            "colors": {"primary_color": self.color, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data

    def __repr__(self) -> str:
        return f"<Role {self.name} id={self.id}>"


@dataclass(eq=False)
class Member:
    user: User
    roles: list[Role] = field(default_factory=list)
    nick: str | None = None
    joined_at: float = field(default_factory=time.time)

    def payload(self, *, permissions: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user": self.user.payload(),
            "roles": [str(r.id) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if permissions is not None:
            data["permissions"] = str(int(permissions))
        return data


@dataclass(eq=False)
class Overwrite:
    """A channel permission overwrite for a role (type 0) or a member (type 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.type, "allow": str(int(self.allow)), "deny": str(int(self.deny))}


CHANNEL_TEXT = 0
CHANNEL_DM = 1
CHANNEL_CATEGORY = 4


@dataclass(eq=False)
class Channel:
    id: int
    name: str
    type: int = CHANNEL_TEXT
    guild: Guild | None = None
    nsfw: bool = False
    topic: str | None = None
    position: int = 0
    parent_id: int | None = None
    overwrites: list[Overwrite] = field(default_factory=list)
    recipient: User | None = None  # DM channels only

    @property
    def is_dm(self) -> bool:
        return self.type == CHANNEL_DM

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self) -> dict[str, Any]:
        if self.is_dm:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": CHANNEL_DM,
                "last_message_id": None,
                "recipients": [self.recipient.payload()],
                "flags": 0,
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.payload() for o in self.overwrites],
            "nsfw": self.nsfw,
            "parent_id": str(self.parent_id) if self.parent_id else None,
            "flags": 0,
        }
        if self.guild is not None:
            data["guild_id"] = str(self.guild.id)
        if self.type == CHANNEL_TEXT:
            data.update(topic=self.topic, last_message_id=None, rate_limit_per_user=0)
        return data

    def __repr__(self) -> str:
        where = self.guild.name if self.guild else "DM"
        return f"<Channel #{self.name} in {where} id={self.id}>"


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner: User
    roles: list[Role] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)

    @property
    def everyone(self) -> Role:
        return self.roles[0]

    def channel(self, name: str) -> Channel:
        """The channel called ``name`` (``#`` prefix optional)."""
        name = name.lstrip("#")
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise KeyError(f"no channel {name!r} in guild {self.name!r}; have {[c.name for c in self.channels]}")

    def role(self, name: str) -> Role:
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(f"no role {name!r} in guild {self.name!r}; have {[r.name for r in self.roles]}")

    def member(self, user: User) -> Member | None:
        return self.members.get(user.id)

    def base_permissions(self, user: User) -> int:
        """Guild-wide permissions of ``user`` (roles only, no channel overwrites)."""
        if user.id == self.owner.id:
            return ALL_PERMISSIONS
        member = self.members.get(user.id)
        if member is None:
            return 0
        perms = int(self.everyone.permissions)
        for role in member.roles:
            perms |= int(role.permissions)
        if perms & Perm.ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    def permissions_in(self, channel: Channel, user: User) -> int:
        """Discord's permission algorithm: base permissions, then @everyone, role and member overwrites."""
        perms = self.base_permissions(user)
        if perms == ALL_PERMISSIONS:
            return perms
        member = self.members.get(user.id)
        if member is None:
            return 0
        by_id = {o.id: o for o in channel.overwrites}
        everyone = by_id.get(self.id)
        if everyone:
            perms = (perms & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role in member.roles:
            ow = by_id.get(role.id)
            if ow and ow.type == 0:
                allow |= ow.allow
                deny |= ow.deny
        perms = (perms & ~deny) | allow
        own = by_id.get(user.id)
        if own and own.type == 1:
            perms = (perms & ~own.deny) | own.allow
        if not perms & Perm.VIEW_CHANNEL:
            return 0
        if not perms & Perm.SEND_MESSAGES:
            perms &= ~(Perm.SEND_TTS_MESSAGES | Perm.MENTION_EVERYONE | Perm.EMBED_LINKS | Perm.ATTACH_FILES)
        return perms

    def __repr__(self) -> str:
        return f"<Guild {self.name} id={self.id}>"


@dataclass(eq=False)
class Attachment:
    """A stored file: something the bot uploaded, or an :meth:`Emulator.upload` by a test user."""

    id: int
    filename: str
    data: bytes = field(repr=False)
    content_type: str | None = None
    description: str | None = None
    ephemeral: bool = False
    width: int | None = None
    height: int | None = None
    channel_id: int = 0
    url: str = ""  # filled in by the emulator: an HTTP URL on its own CDN route

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description:
            data["description"] = self.description
        if self.ephemeral:
            data["ephemeral"] = True
        if self.width is not None:
            data.update(width=self.width, height=self.height)
        return data


Upload = Attachment  # what Emulator.upload() returns: an attachment a user "uploaded" for an option


@dataclass(eq=False)
class Component:
    """One interactive component of a message (button or select menu), flattened out of its rows."""

    type: int
    custom_id: str | None = None
    label: str | None = None
    style: int | None = None
    url: str | None = None
    disabled: bool = False
    emoji: str | None = None
    options: list[dict[str, Any]] = field(default_factory=list)
    placeholder: str | None = None
    min_values: int = 1
    max_values: int = 1
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_button(self) -> bool:
        return self.type == 2

    @property
    def is_select(self) -> bool:
        return self.type in (3, 5, 6, 7, 8)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Component:
        emoji = raw.get("emoji") or None
        return cls(
            type=raw["type"],
            custom_id=raw.get("custom_id"),
            label=raw.get("label"),
            style=raw.get("style"),
            url=raw.get("url"),
            disabled=bool(raw.get("disabled", False)),
            emoji=(emoji.get("name") if emoji else None),
            options=list(raw.get("options", [])),
            placeholder=raw.get("placeholder"),
            min_values=raw.get("min_values", 1),
            max_values=raw.get("max_values", 1),
            raw=raw,
        )


def walk_components(rows: list[dict[str, Any]]):
    """Yield every component dict, depth first (action rows, sections, containers, labels included)."""
    for comp in rows:
        yield comp
        yield from walk_components(comp.get("components", []))
        if isinstance(comp.get("component"), dict):  # label (type 18)
            yield from walk_components([comp["component"]])
        if isinstance(comp.get("accessory"), dict):  # section (type 9)
            yield from walk_components([comp["accessory"]])


@dataclass(eq=False)
class Message:
    id: int
    channel: Channel
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    raw_components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    tts: bool = False
    created_at: float = field(default_factory=time.time)
    edited_at: float | None = None
    deleted: bool = False
    ephemeral_for: User | None = None  # set: an ephemeral message visible to this user only
    reactions: dict[str, list[User]] = field(default_factory=dict)
    interaction: Interaction | None = None  # the interaction this message answers
    reference_id: int | None = None  # message this one replies to
    edits: int = 0
    posted_seq: int = 0  # order in which messages became visible (0 while loading)

    @property
    def guild(self) -> Guild | None:
        return self.channel.guild

    @property
    def ephemeral(self) -> bool:
        return self.ephemeral_for is not None

    @property
    def loading(self) -> bool:
        """True for a deferred ("Bot is thinking...") response that has no content yet."""
        return bool(self.flags & MESSAGE_FLAG_LOADING)

    @property
    def components(self) -> list[Component]:
        """Buttons and select menus of the message, flattened out of their action rows."""
        return [Component.from_raw(c) for c in walk_components(self.raw_components) if c["type"] in (2, 3, 5, 6, 7, 8)]

    @property
    def buttons(self) -> list[Component]:
        return [c for c in self.components if c.is_button]

    def component(self, custom_id: str) -> Component:
        for comp in self.components:
            if comp.custom_id == custom_id:
                return comp
        raise KeyError(f"message {self.id} has no component {custom_id!r}; has {[c.custom_id for c in self.components]}")

    def visible_to(self, user: User) -> bool:
        if self.ephemeral_for is not None:
            return self.ephemeral_for.id == user.id
        if self.channel.is_dm:
            return self.channel.recipient is not None and self.channel.recipient.id == user.id
        return True

    def reaction_users(self, emoji: str) -> list[User]:
        return list(self.reactions.get(emoji, []))

    def payload(self, *, viewer_id: int, application_id: int) -> dict[str, Any]:
        """The message as Discord would serialise it for ``viewer_id`` (for ``reactions[].me``)."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel.id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at),
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.payload() for a in self.attachments],
            "embeds": self.embeds,
            "reactions": [
                {
                    "emoji": emoji_payload(emoji),
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": any(u.id == viewer_id for u in users),
                    "me_burst": False,
                    "burst_colors": [],
                }
                for emoji, users in self.reactions.items()
                if users
            ],
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
            "components": self.raw_components,
        }
        if self.guild is not None:
            data["guild_id"] = str(self.guild.id)
        if self.reference_id is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": str(self.reference_id),
                "channel_id": str(self.channel.id),
                "guild_id": str(self.guild.id) if self.guild else None,
            }
        it = self.interaction
        if it is not None:
            data["webhook_id"] = str(application_id)
            data["application_id"] = str(application_id)
            meta: dict[str, Any] = {
                "id": str(it.id),
                "type": it.type,
                "user": it.user.payload(),
                "authorizing_integration_owners": it.integration_owners(),
            }
            if it.type == 2:
                meta["name"] = it.command_name
                meta["command_type"] = 1
            if it.source_message is not None:
                meta["interacted_message_id"] = str(it.source_message.id)
            if it.original_message is not None and it.original_message is not self:
                meta["original_response_message_id"] = str(it.original_message.id)
            data["interaction_metadata"] = meta
            data["interaction"] = {"id": str(it.id), "type": it.type, "name": it.command_name or "", "user": it.user.payload()}
        return data

    def __repr__(self) -> str:
        extra = " ephemeral" if self.ephemeral else ""
        extra += " loading" if self.loading else ""
        extra += " deleted" if self.deleted else ""
        return f"<Message id={self.id} in #{self.channel.name} by {self.author.name}{extra} content={self.content[:40]!r}>"


def emoji_payload(emoji: str) -> dict[str, Any]:
    """``"🔄"`` -> unicode emoji, ``"name:123"`` -> custom emoji."""
    if ":" in emoji:
        parts = emoji.split(":")
        animated = len(parts) == 3 and parts[0] == "a"
        return {"id": parts[-1], "name": parts[-2], "animated": animated}
    return {"id": None, "name": emoji}


@dataclass(eq=False)
class Failure:
    """A request the bot made that Discord would have refused (or an interaction the user saw fail)."""

    status: int
    code: int
    message: str
    route: str
    errors: dict[str, Any] | None = None
    interaction_id: int | None = None
    at: float = field(default_factory=time.time)

    def __str__(self) -> str:
        text = f"{self.status} code={self.code} {self.message} [{self.route}]"
        if self.errors:
            text += f" errors={self.errors}"
        return text


@dataclass(eq=False)
class Event:
    """One entry of the emulator's ordered log (``emu.events``)."""

    seq: int
    kind: str
    data: dict[str, Any]
    at: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        return f"<Event #{self.seq} {self.kind} {self.data}>"


# Interaction types
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5


@dataclass(eq=False)
class Interaction:
    """A user action sent to the bot, and everything the bot answered to it.

    Test-facing attributes: ``acked``, ``response_type``, ``ephemeral``, ``original_message``,
    ``followups``, ``choices`` (autocomplete answer), ``modal`` (the modal the bot opened),
    ``failures`` (rules this interaction's answers broke); waiters: :meth:`wait_acked`,
    :meth:`original`, :meth:`wait_followup`.
    """

    id: int
    token: str
    type: int
    user: User
    channel: Channel
    data: dict[str, Any]
    created_at: float
    emulator: Any = field(repr=False)
    command_name: str | None = None
    source_message: Message | None = None  # the message whose component was used
    response_type: int | None = None
    acked_at: float | None = None
    ephemeral: bool = False
    original_message: Message | None = None
    followups: list[Message] = field(default_factory=list)
    choices: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None
    failures: list[Failure] = field(default_factory=list)
    _followups_seen: int = 0

    @property
    def guild(self) -> Guild | None:
        return self.channel.guild

    @property
    def acked(self) -> bool:
        return self.response_type is not None

    @property
    def deferred(self) -> bool:
        return self.response_type in (5, 6)

    def integration_owners(self) -> dict[str, str]:
        if self.guild is not None:
            return {"0": str(self.guild.id)}
        return {"1": str(self.user.id)}

    async def wait_acked(self, timeout: float | None = None) -> int:
        """Wait until the bot sent its initial response; returns the callback type (4, 5, 6, 7, 8, 9)."""
        await self.emulator.wait_until(
            lambda: self.response_type, timeout, f"interaction {self.id} ({self.describe()}) to be acknowledged"
        )
        assert self.response_type is not None
        return self.response_type

    async def original(self, timeout: float | None = None) -> Message:
        """The response message once it has content (for a deferral: once the bot filled it in).

        For component interactions answered with type 6/7 this is the message holding the component.
        """

        def ready() -> Message | None:
            msg = self.original_message
            return msg if msg is not None and not msg.loading else None

        return await self.emulator.wait_until(ready, timeout, f"the original response of {self.describe()}")

    async def wait_followup(self, timeout: float | None = None) -> Message:
        """The next follow-up message not returned by an earlier call (the first follow-up after a
        type-5 deferral fills the deferred original message, and is returned here as well)."""

        def ready() -> Message | None:
            if len(self.followups) > self._followups_seen:
                self._followups_seen += 1
                return self.followups[self._followups_seen - 1]
            return None

        return await self.emulator.wait_until(ready, timeout, f"a follow-up to {self.describe()}")

    def describe(self) -> str:
        kind = {2: "command", 3: "component", 4: "autocomplete", 5: "modal submit"}.get(self.type, str(self.type))
        what = self.command_name or self.data.get("custom_id") or ""
        return f"{kind} {what!r} by {self.user.name} in #{self.channel.name}"

    def __repr__(self) -> str:
        return f"<Interaction id={self.id} {self.describe()} response_type={self.response_type}>"

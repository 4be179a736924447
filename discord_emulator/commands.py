"""Registered application commands, and turning a test's ``invoke(...)`` into interaction data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models import Attachment, Channel, Guild, Perm, Role, User

if TYPE_CHECKING:
    from .emulator import Emulator

SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11
OPTION_TYPE_NAMES = {
    STRING: "string", INTEGER: "integer", BOOLEAN: "boolean", USER: "user", CHANNEL: "channel",
    ROLE: "role", MENTIONABLE: "mentionable", NUMBER: "number", ATTACHMENT: "attachment",
}


class InvokeError(Exception):
    """A test asked for something a Discord user could not do (unknown command, bad option, hidden command...)."""


@dataclass
class CommandRegistry:
    """What the bot registered: ``global_commands`` and ``guild_commands[guild_id]``, by name.

    Each command is the JSON Discord stores (with ``id``, ``application_id``, ``version``).
    """

    global_commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    guild_commands: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def scope(self, guild_id: int | None) -> dict[str, dict[str, Any]]:
        if guild_id is None:
            return self.global_commands
        return self.guild_commands.setdefault(guild_id, {})

    def all(self) -> list[dict[str, Any]]:
        out = list(self.global_commands.values())
        for cmds in self.guild_commands.values():
            out.extend(cmds.values())
        return out

    def find(self, name: str, guild: Guild | None, ctype: int = 1) -> dict[str, Any] | None:
        """The command a user in ``guild`` (None: a DM) sees under ``name`` (guild commands win)."""
        if guild is not None:
            cmd = self.guild_commands.get(guild.id, {}).get(name)
            if cmd is not None and cmd.get("type", 1) == ctype:
                return cmd
        cmd = self.global_commands.get(name)
        if cmd is not None and cmd.get("type", 1) == ctype:
            return cmd
        return None

    def names(self, guild: Guild | None = None) -> list[str]:
        """Full names (``"admin credits grant"``) of every invocable slash command visible in ``guild``."""
        out: list[str] = []
        scopes = [self.global_commands] + ([self.guild_commands.get(guild.id, {})] if guild else [])
        for scope in scopes:
            for cmd in scope.values():
                if cmd.get("type", 1) == 1:
                    out.extend(_leaf_names(cmd["name"], cmd.get("options") or []))
        return sorted(set(out))

    def get(self, full_name: str, guild: Guild | None = None) -> dict[str, Any]:
        """The JSON of ``"name"`` or of a subcommand ``"group sub"`` as registered."""
        parts = full_name.split()
        cmd = self.find(parts[0], guild)
        if cmd is None:
            raise KeyError(full_name)
        node = cmd
        for part in parts[1:]:
            node = next((o for o in node.get("options") or [] if o["name"] == part and o["type"] in (1, 2)), None)
            if node is None:
                raise KeyError(full_name)
        return node


def _leaf_names(prefix: str, options: list[dict[str, Any]]) -> list[str]:
    subs = [o for o in options if o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP)]
    if not subs:
        return [prefix]
    out: list[str] = []
    for sub in subs:
        out.extend(_leaf_names(f"{prefix} {sub['name']}", sub.get("options") or []))
    return out


def command_visible(cmd: dict[str, Any], guild: Guild | None, channel: Channel, user: User) -> str | None:
    """Why ``user`` can't see ``cmd`` in ``channel``, or None if they can."""
    if guild is None:
        contexts = cmd.get("contexts")
        if cmd.get("guild_id") or cmd.get("dm_permission") is False or (contexts is not None and 1 not in contexts):
            return "the command is not available in DMs"
        return None
    contexts = cmd.get("contexts")
    if contexts is not None and 0 not in contexts:
        return "the command is not available in guilds"
    if cmd.get("nsfw") and not channel.nsfw:
        return "the command is age-restricted and the channel is not"
    needed = cmd.get("default_member_permissions")
    if needed is not None:
        needed = int(needed)
        have = guild.base_permissions(user)
        if have & needed != needed or (needed == 0 and have & 8 == 0):
            names = ", ".join(p.name.replace("GUILD", "SERVER").replace("_", " ").title() for p in Perm if needed & p)
            return f"the user lacks default_member_permissions={needed} ({names or 'Administrator'})"
    return None


@dataclass
class BuiltCommand:
    command: dict[str, Any]
    data: dict[str, Any]
    full_name: str


def build_command_data(
    emu: Emulator,
    user: User,
    channel: Channel,
    full_name: str,
    values: dict[str, Any],
    *,
    focused: str | None = None,
) -> BuiltCommand:
    """Walk the registered tree along ``full_name`` and build the interaction ``data`` (type 2 or 4)."""
    guild = channel.guild
    parts = full_name.split()
    if not parts:
        raise InvokeError("empty command name")
    cmd = emu.commands.find(parts[0], guild)
    if cmd is None:
        raise InvokeError(
            f"no slash command {parts[0]!r} is registered for {guild.name if guild else 'DMs'}; "
            f"registered: {emu.commands.names(guild)}"
        )
    why = command_visible(cmd, guild, channel, user)
    if why:
        raise InvokeError(f"{user.name} cannot use /{full_name} in #{channel.name}: {why}")

    chain: list[dict[str, Any]] = []  # subcommand group / subcommand definitions walked through
    node = cmd
    for part in parts[1:]:
        sub = next((o for o in node.get("options") or [] if o["name"] == part and o["type"] in (1, 2)), None)
        if sub is None:
            raise InvokeError(f"/{full_name}: {part!r} is not a subcommand; known: {emu.commands.names(guild)}")
        chain.append(sub)
        node = sub
    defs = node.get("options") or []
    if any(o["type"] in (1, 2) for o in defs):
        raise InvokeError(f"/{full_name} is a group; invoke one of {[n for n in emu.commands.names(guild) if n.startswith(full_name + ' ')]}")

    resolved: dict[str, dict[str, Any]] = {}
    leaf: list[dict[str, Any]] = []
    by_name = {o["name"]: o for o in defs}
    for name, value in values.items():
        opt = by_name.get(name)
        if opt is None:
            raise InvokeError(f"/{full_name} has no option {name!r}; options: {list(by_name)}")
        if name == focused:
            if not opt.get("autocomplete"):
                raise InvokeError(f"option {name!r} of /{full_name} has no autocomplete")
            leaf.append({"name": name, "type": opt["type"], "value": str(value), "focused": True})
            continue
        converted = _convert(emu, guild, full_name, opt, value, resolved, focused is not None)
        leaf.append({"name": name, "type": opt["type"], "value": converted})
    if focused is None:
        missing = [o["name"] for o in defs if o.get("required") and o["name"] not in values]
        if missing:
            raise InvokeError(f"/{full_name} is missing required option(s) {missing}")
    elif focused not in values:
        raise InvokeError(f"focused option {focused!r} needs a value (what the user typed so far)")

    options: list[dict[str, Any]] = leaf
    for sub in reversed(chain):
        options = [{"name": sub["name"], "type": sub["type"], "options": options}]
    data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": options}
    if cmd.get("guild_id"):
        data["guild_id"] = cmd["guild_id"]
    if resolved:
        data["resolved"] = resolved
    return BuiltCommand(command=cmd, data=data, full_name=full_name)


def _convert(
    emu: Emulator,
    guild: Guild | None,
    full_name: str, opt: dict[str, Any], value: Any, resolved: dict[str, dict[str, Any]], partial: bool
) -> Any:
    otype = opt["type"]
    label = f"option {opt['name']!r} of /{full_name}"
    try:
        if otype == STRING:
            value = str(value)
            if not partial:
                lo, hi = opt.get("min_length"), opt.get("max_length")
                if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
                    raise InvokeError(f"{label}: length {len(value)} outside [{lo}, {hi}]")
        elif otype == INTEGER:
            if isinstance(value, bool) or int(value) != value:
                raise InvokeError(f"{label} must be an integer, got {value!r}")
            value = int(value)
        elif otype == NUMBER:
            value = float(value)
        elif otype == BOOLEAN:
            if not isinstance(value, bool):
                raise InvokeError(f"{label} must be a bool, got {value!r}")
        elif otype in (USER, MENTIONABLE) and isinstance(value, User):
            resolved.setdefault("users", {})[str(value.id)] = value.payload()
            member = guild.member(value) if guild else None
            if guild is not None and member is not None:
                payload = member.payload(permissions=guild.base_permissions(value))
                del payload["user"]
                resolved.setdefault("members", {})[str(value.id)] = payload
            return str(value.id)
        elif otype in (ROLE, MENTIONABLE) and isinstance(value, Role):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        elif otype == CHANNEL and isinstance(value, Channel):
            payload = value.payload()
            payload["permissions"] = str(value.guild.permissions_in(value, emu.bot_user)) if value.guild else "0"
            resolved.setdefault("channels", {})[str(value.id)] = payload
            return str(value.id)
        elif otype == ATTACHMENT:
            if not isinstance(value, Attachment):
                raise InvokeError(f"{label} takes emu.upload(...), got {type(value).__name__}")
            resolved.setdefault("attachments", {})[str(value.id)] = value.payload()
            return str(value.id)
        else:
            raise InvokeError(f"{label} ({OPTION_TYPE_NAMES.get(otype, otype)}) got {value!r}")
    except (TypeError, ValueError) as exc:
        raise InvokeError(f"{label}: cannot use {value!r} as {OPTION_TYPE_NAMES.get(otype, otype)}") from exc
    if not partial:
        choices = opt.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise InvokeError(f"{label}: {value!r} is not one of the choices {[c['value'] for c in choices]}")
        if otype in (INTEGER, NUMBER):
            lo, hi = opt.get("min_value"), opt.get("max_value")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise InvokeError(f"{label}: {value} outside [{lo}, {hi}]")
    return value

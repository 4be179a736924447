"""What the sandbox page shows, as JSON, for the member who looks at it.

Everything is computed from the emulator's live objects for one viewer: Discord shows ephemeral
messages and DMs only to their member, marks the reactions that member added, and hides commands
that member may not use.
"""

from __future__ import annotations

from typing import Any

from discord_emulator import Channel, Emulator, Message, Perm, User
from discord_emulator.commands import command_visible

from .session import Sandbox


def channel_view(emu: Emulator, channel: Channel) -> dict[str, Any]:
    notes = []
    if channel.nsfw:
        notes.append("age-restricted")
    if not emu.bot_permissions(channel) & Perm.ATTACH_FILES:
        notes.append("the bot lacks Attach Files")
    return {"id": str(channel.id), "name": channel.name, "topic": channel.topic or "", "notes": notes, "dm": channel.is_dm}


def member_view(sandbox: Sandbox, user: User) -> dict[str, Any]:
    guild = sandbox.guild
    member = guild.member(user)
    roles = [role.name for role in member.roles] if member else []
    perms = guild.base_permissions(user)
    powers = [name for name, bit in (("Administrator", Perm.ADMINISTRATOR), ("Manage Server", Perm.MANAGE_GUILD)) if perms & bit]
    return {"name": user.name, "id": str(user.id), "roles": roles, "powers": powers[:1]}


def message_view(msg: Message, viewer: User) -> dict[str, Any]:
    it = msg.interaction
    return {
        "id": str(msg.id),
        "channel": str(msg.channel.id),
        "author": {"id": str(msg.author.id), "name": msg.author.name, "bot": msg.author.bot},
        "content": msg.content,
        "embeds": msg.embeds,
        "attachments": [
            {"id": str(a.id), "filename": a.filename, "url": a.url, "content_type": a.content_type or "",
             "width": a.width, "height": a.height, "size": a.size}
            for a in msg.attachments
        ],
        "components": msg.raw_components,
        "reactions": [
            {"emoji": emoji, "count": len(users), "me": any(u.id == viewer.id for u in users)}
            for emoji, users in msg.reactions.items() if users
        ],
        "ephemeral": msg.ephemeral,
        "loading": msg.loading,
        "edited": msg.edited_at is not None,
        "time": msg.created_at,
        "command": {"user": it.user.name, "name": it.command_name} if it is not None and it.type == 2 else None,
        "reply_to": str(msg.reference_id) if msg.reference_id else None,
    }


def visible(msg: Message, viewer: User) -> bool:
    return not msg.deleted and msg.visible_to(viewer)


def state_view(sandbox: Sandbox, viewer: User) -> dict[str, Any]:
    """Everything the page shows to ``viewer``: the server, their DM with the bot, the messages they see."""
    emu = sandbox.emu
    dm = emu.dm_channel(viewer)
    return {
        "type": "state",
        "me": viewer.name,
        "bot": emu.bot_user.name,
        "members": [member_view(sandbox, user) for user in sandbox.members()],
        "guild": {"name": sandbox.guild.name, "channels": [channel_view(emu, c) for c in sandbox.channels()]},
        "dm": channel_view(emu, dm),
        "users": {str(u.id): u.name for u in emu.users.values()},
        "roles": {str(r.id): r.name for r in sandbox.guild.roles},
        "messages": [message_view(m, viewer) for m in emu.messages.values() if visible(m, viewer)],
        "upload_limit": emu.settings.attachment_size_limit,
    }


def commands_view(emu: Emulator, user: User, channel: Channel) -> dict[str, Any]:
    """The slash commands ``user`` can run in ``channel`` (subcommands by full name, with their options),
    and those Discord hides from them with the reason."""
    guild = channel.guild
    usable, hidden = [], []
    for name in emu.commands.names(guild):
        why = command_visible(emu.commands.find(name.split()[0], guild), guild, channel, user)
        node = emu.commands.get(name, guild)
        if why:
            hidden.append({"name": name, "why": why})
        else:
            usable.append({"name": name, "description": node.get("description", ""), "options": node.get("options") or []})
    return {"commands": usable, "hidden": hidden}

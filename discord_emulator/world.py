"""The default world: two guilds, an age-restricted channel, roles, and members with and without
Administrator / Manage Server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .models import Perm

if TYPE_CHECKING:
    from .emulator import Emulator


def build_default_world(emu: Emulator) -> None:
    """Build (ids are the same on every run)::

        Test Guild (owner: owner)             Second Guild (owner: carol)
          #general  #nsfw (age-restricted)      #general  #lounge
          #art                                   roles: Moderator (Manage Server)
          roles: Admin (Administrator),         members: carol, alice (Moderator), bob, bot
                 Moderator (Manage Server)
          members: owner, admin (Admin), mod (Moderator), alice, bob, carol, bot

    ``admin`` has Administrator (so also Manage Server); ``mod`` has Manage Server only; ``alice``,
    ``bob`` and ``carol`` are plain members in Test Guild.
    """
    owner, admin, mod = emu.add_user("owner"), emu.add_user("admin"), emu.add_user("mod")
    alice, bob, carol = emu.add_user("alice"), emu.add_user("bob"), emu.add_user("carol")

    g1 = emu.add_guild("Test Guild", owner)
    admin_role = emu.add_role(g1, "Admin", Perm.ADMINISTRATOR)
    mod_role = emu.add_role(g1, "Moderator", Perm.MANAGE_GUILD | Perm.MANAGE_MESSAGES)
    emu.add_member(g1, admin, [admin_role])
    emu.add_member(g1, mod, [mod_role])
    for user in (alice, bob, carol):
        emu.add_member(g1, user)
    emu.add_channel(g1, "general", topic="General chat")
    emu.add_channel(g1, "nsfw", nsfw=True, topic="Age-restricted")
    emu.add_channel(g1, "art")

    g2 = emu.add_guild("Second Guild", carol)
    mod2 = emu.add_role(g2, "Moderator", Perm.MANAGE_GUILD)
    emu.add_member(g2, alice, [mod2])
    emu.add_member(g2, bob)
    emu.add_channel(g2, "general")
    emu.add_channel(g2, "lounge")

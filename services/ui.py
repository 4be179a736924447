"""Shared Discord UI pieces: job buttons (restart-safe), result views, refusals and progress text."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from typing import Any

import discord

log = logging.getLogger(__name__)

REROLL, DELETE, FAVOURITE, DM = "🔄", "❌", "⭐", "✉️"

# custom_id = "job:<id>:<action>[:<index>]" — parsed after a restart by discord.ui.DynamicItem.
JOB_BUTTON_TEMPLATE = r"job:(?P<job>[0-9]+):(?P<action>[a-z]+)(?::(?P<index>[0-9]+))?"


def job_custom_id(job_id: int, action: str, index: int | None = None) -> str:
    return f"job:{job_id}:{action}" + (f":{index}" if index is not None else "")


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=JOB_BUTTON_TEMPLATE):
    """Every button under a job's messages; the action runs through the bot's JobService."""

    def __init__(self, job_id: int, action: str, index: int | None = None, **button: Any) -> None:
        self.job_id, self.action, self.index = job_id, action, index
        super().__init__(discord.ui.Button(custom_id=job_custom_id(job_id, action, index), **button))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any):
        index = match["index"]
        return cls(int(match["job"]), match["action"], int(index) if index is not None else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.services.actions.on_button(interaction, self.job_id, self.action, self.index)


def result_view(job_id: int, n_images: int, actions: tuple[str, ...] = ("reroll", "var", "up", "delete")) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    if "reroll" in actions:
        view.add_item(JobButton(job_id, "reroll", emoji=REROLL, style=discord.ButtonStyle.secondary, row=0))
    if "delete" in actions:
        view.add_item(JobButton(job_id, "delete", emoji=DELETE, style=discord.ButtonStyle.secondary, row=0))
    for action, prefix, row in (("var", "V", 1), ("up", "U", 2)):
        if action in actions:
            for i in range(n_images):
                view.add_item(JobButton(job_id, action, i, label=f"{prefix}{i + 1}", row=row))
    return view


# Result views of job kinds whose buttons differ from `result_view` (each registered by its cog).
RESULT_VIEWS: dict[str, Callable[[int, int], discord.ui.View]] = {}


def result_view_for(kind: str, job_id: int, n_images: int) -> discord.ui.View:
    build = RESULT_VIEWS.get(kind)
    return build(job_id, n_images) if build else result_view(job_id, n_images)


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton(job_id, "cancel", label="Cancel", style=discord.ButtonStyle.danger))
    return view


def job_id_from_message(message: discord.Message | dict[str, Any], action: str = "reroll") -> int | None:
    """The job a result message belongs to, read from its buttons' custom_ids.

    Only buttons with `action` count: status messages carry a job's cancel button too, and must
    not be taken for its result.
    """
    pattern = re.compile(JOB_BUTTON_TEMPLATE)
    rows = message.components if isinstance(message, discord.Message) else message.get("components", [])
    for row in rows:
        children = getattr(row, "children", None) or (row.get("components", []) if isinstance(row, dict) else [])
        for child in children:
            custom_id = getattr(child, "custom_id", None) or (child.get("custom_id") if isinstance(child, dict) else None)
            match = pattern.fullmatch(custom_id or "")
            if match and match["action"] == action:
                return int(match["job"])
    return None


def png_file(data: bytes, name: str) -> discord.File:
    return discord.File(io.BytesIO(data), filename=name)


def progress_bar(step: int, total: int, width: int = 16) -> str:
    filled = round(width * step / max(1, total))
    return "█" * filled + "░" * (width - filled)


def error_embed(title: str, description: str) -> discord.Embed:
    return discord.Embed(title=title, description=description, colour=discord.Colour.red())


async def refuse(interaction: discord.Interaction, message: str, title: str = "Can't do that") -> None:
    """An ephemeral refusal that says what was wrong and what to do (nothing was charged)."""
    embed = error_embed(title, message)
    embed.set_footer(text="Nothing was charged.")
    if interaction.response.is_done():
        await interaction.followup.send(embed=embed, ephemeral=True)
    else:
        await interaction.response.send_message(embed=embed, ephemeral=True)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""Shared Discord UI pieces: the one error and check path (the command tree, `CheckedItem`, `report_error`),
job buttons (restart-safe), result views, refusals and progress text."""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import discord
from discord import app_commands

from services.jobs import UserError
from storage.members import FORMER_MEMBER

log = logging.getLogger(__name__)

REROLL, DELETE, FAVOURITE, DM = "🔄", "❌", "⭐", "✉️"

# custom_id = "job:<id>:<action>[:<index>]" — parsed after a restart by discord.ui.DynamicItem.
JOB_BUTTON_TEMPLATE = r"job:(?P<job>[0-9]+):(?P<action>[a-z]+)(?::(?P<index>[0-9]+))?"


def job_custom_id(job_id: int, action: str, index: int | None = None) -> str:
    return f"job:{job_id}:{action}" + (f":{index}" if index is not None else "")


def manages_server(interaction: discord.Interaction) -> bool:
    """The member's own permissions in this channel (Administrator implies Manage Server)."""
    perms = interaction.permissions
    return interaction.guild_id is not None and (perms.manage_guild or perms.administrator)


def owner_mention(owner_id: int) -> str:
    """How a module's owner is named: a mention, or "a former member" once they asked to be forgotten."""
    return "a former member" if owner_id == FORMER_MEMBER else f"<@{owner_id}>"


def is_moderator(member: Any) -> bool:
    perms = getattr(member, "guild_permissions", None)
    return bool(perms and (perms.manage_messages or perms.manage_guild or perms.administrator))


# -- the one error and check path -----------------------------------------------------------------------------
GENERATES = "generates"  # app command extras key: the command starts jobs here (all channel rules apply)
OWN_DATA = "own_data"  # app command extras key: it touches only the member's own data, so a ban does not stop it


async def admit(interaction: discord.Interaction, *, channel_rules: bool) -> None:
    """Apply the ban and channel rules (`Services.check_access`, which reads SQL): the check every command,
    button and form passes, once it is acknowledged.  ``channel_rules``: the interaction may start a job or
    post here, so the channel rules and the bot's own permissions apply too, and members who manage the
    server are not exempt from a ban."""
    await interaction.client.services.check_access(
        guild_id=interaction.guild_id,
        user_id=interaction.user.id,
        channel_id=interaction.channel_id,
        manager=manages_server(interaction),
        channel_rules=channel_rules,
        bot_permissions=interaction.app_permissions,
    )


async def report_error(interaction: discord.Interaction, error: Exception) -> None:
    """How every failed command or button ends: a `UserError` as an ephemeral refusal with its text, any
    other error logged and answered with an apology."""
    original = getattr(error, "original", error)
    if isinstance(original, UserError):
        await refuse(interaction, str(original))
        return
    log.error("interaction %s failed", interaction.command and interaction.command.qualified_name, exc_info=original)
    await refuse(interaction, "That failed on the bot's side; the error is in its log.")


class CommandTree(app_commands.CommandTree):
    """The bot's tree: every command is acknowledged and admitted (`admit`) before it runs, and every
    error of a command ends in `report_error`.  Autocomplete is never checked: it answers at once."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.type is discord.InteractionType.autocomplete:
            return True
        command = interaction.command
        await interaction.response.defer(ephemeral=True, thinking=True)  # acknowledge first: admit reads SQL
        extras = command.extras if command else {}
        if not extras.get(OWN_DATA):
            await admit(interaction, channel_rules=bool(extras.get(GENERATES)))
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        await report_error(interaction, error)


class CheckedItem:
    """Base of the bot's restart-safe components (mixed into a `discord.ui.DynamicItem`, or a submitted
    `RemixForm`): acknowledge, `admit`, the item's own check (`check`, e.g. ownership) in
    `interaction_check`, then `run`.  Dynamic items have no view to report to, so errors of either end in
    this item's `on_error`."""

    channel_rules = True  # clicks start jobs or post here: the channel rules apply

    async def acknowledge(self, interaction: discord.Interaction) -> None:
        """Answer within Discord's 3 s before anything reads SQL (unless the answer is a form: a modal must be
        the first answer, so `run` sends it); default: a deferred update."""
        await interaction.response.defer()

    async def admit(self, interaction: discord.Interaction) -> None:
        """The access rules (`admit`); an item that touches only the member's own data may skip them."""
        await admit(interaction, channel_rules=self.channel_rules)

    async def check(self, interaction: discord.Interaction) -> None:
        """Raise `UserError` when this member may not use this item (after the access rules)."""

    async def run(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        try:
            await self.acknowledge(interaction)
            await self.admit(interaction)
            await self.check(interaction)
        except Exception as exc:
            await self.on_error(interaction, exc)
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.run(interaction)
        except Exception as exc:
            await self.on_error(interaction, exc)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)


GENERATING_ACTIONS = ("reroll", "subtle", "var", "up", "sweep", "eta")  # not "remix": it answers with its form


class JobButton(CheckedItem, discord.ui.DynamicItem[discord.ui.Button], template=JOB_BUTTON_TEMPLATE):
    """Every button under a job's messages; the action runs through the bot's `Actions`."""

    def __init__(self, job_id: int, action: str, index: int | None = None, **button: Any) -> None:
        self.job_id, self.action, self.index = job_id, action, index
        super().__init__(discord.ui.Button(custom_id=job_custom_id(job_id, action, index), **button))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: Any):
        index = match["index"]
        return cls(int(match["job"]), match["action"], int(index) if index is not None else None)

    async def acknowledge(self, interaction: discord.Interaction) -> None:
        if self.action in GENERATING_ACTIONS:  # the answer is a new ephemeral message: the queue position
            await interaction.response.defer(ephemeral=True, thinking=True)
        elif self.action != "remix":  # Remix answers with its form (`Actions.on_button`), after the checks
            await interaction.response.defer()

    async def check(self, interaction: discord.Interaction) -> None:
        """Only the job's owner or a moderator deletes a result or cancels a job."""
        if self.action not in ("delete", "cancel") or is_moderator(interaction.user):
            return
        job = await interaction.client.services.actions.job(self.job_id, interaction.guild_id)
        if interaction.user.id != job.user_id:
            what = "made this image" if self.action == "delete" else "asked for this job"
            raise UserError(f"Only the person who {what} or a moderator can {self.action} it.")

    async def run(self, interaction: discord.Interaction) -> None:
        await interaction.client.services.actions.on_button(interaction, self.job_id, self.action, self.index)


# The buttons of one image of a result, in a row per image (at most 4 images: with 🔄 ❌ on top that is
# Discord's 5 rows of at most 5). "var" is Vary (Strong): the id the former V1-V4 buttons had, so
# messages posted before Vary (Subtle) existed keep working.
IMAGE_ACTIONS = ("subtle", "var", "remix", "up")
_IMAGE_LABELS = {"subtle": ("Vary (Subtle)", "V{} Subtle"), "var": ("Vary (Strong)", "V{} Strong"),
                 "remix": ("Remix", "Remix {}"), "up": ("Upscale", "U{}")}  # fmt: skip


def image_button_label(action: str, index: int, n_images: int) -> str:
    """``Vary (Subtle)`` under a single image, ``V2 Subtle`` under image 2 of several."""
    single, numbered = _IMAGE_LABELS[action]
    return single if n_images == 1 else numbered.format(index + 1)


def result_view(
    job_id: int, n_images: int, actions: tuple[str, ...] = ("reroll", "delete", *IMAGE_ACTIONS)
) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    if "reroll" in actions:
        view.add_item(JobButton(job_id, "reroll", emoji=REROLL, style=discord.ButtonStyle.secondary, row=0))
    if "delete" in actions:
        view.add_item(JobButton(job_id, "delete", emoji=DELETE, style=discord.ButtonStyle.secondary, row=0))
    for i in range(n_images):
        for action in IMAGE_ACTIONS:
            if action in actions:
                view.add_item(JobButton(job_id, action, i, label=image_button_label(action, i, n_images), row=1 + i))
    return view


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


_FIT_NOTES = {"crop": "cropped to its bucket (`fit:pad` keeps all of it)", "pad": "padded to its bucket (`fit:crop` fills it)"}


def img2img_note(strength: float | None, noise: float | None = None, fit: str | None = None) -> str:
    """`` · strength 0.7 · noise 0.1 · cropped …`` for a job that started from a picture (``strength`` set)."""
    if strength is None:
        return ""
    note = f" · strength {strength:g} · noise {noise or 0:g}"
    return note + (f" · {_FIT_NOTES[fit]}" if fit in _FIT_NOTES else "")


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


# -- Remix: a modal pre-filled with the job's prompt and negative ------------------------------------------
# custom_id = "remix:<job>:<index>"; its submission is handled by custom_id (see `RemixForm`), never by
# a Modal object kept in memory, so it works whoever submits, however late, after any restart.
REMIX_TEMPLATE = re.compile(r"remix:(?P<job>[0-9]+):(?P<index>[0-9]+)")
TEXT_INPUT_MAX = 4000  # Discord's limit on a text input's value


def remix_modal(job_id: int, index: int, prompt: str, negative: str) -> discord.ui.Modal:
    """The Remix form; stopped, so discord.py does not keep it (the submission is routed by custom_id)."""
    modal = discord.ui.Modal(title="Remix", custom_id=f"remix:{job_id}:{index}", timeout=None)
    modal.add_item(discord.ui.TextInput(
        label="Prompt", custom_id="prompt", style=discord.TextStyle.paragraph, default=clip(prompt, TEXT_INPUT_MAX),
        max_length=TEXT_INPUT_MAX,
    ))  # fmt: skip
    modal.add_item(discord.ui.TextInput(
        label="Negative prompt", custom_id="negative", style=discord.TextStyle.paragraph,
        default=clip(negative, TEXT_INPUT_MAX) or None, required=False, max_length=TEXT_INPUT_MAX,
    ))  # fmt: skip
    modal.stop()
    return modal


class RemixForm(CheckedItem):
    """A submitted Remix form of image ``index`` of job ``job_id``: acknowledged, admitted, then a strong
    variation with the form's texts (`Actions.on_remix`); errors end in `report_error`."""

    def __init__(self, job_id: int, index: int) -> None:
        self.job_id, self.index = job_id, index

    @classmethod
    def submitted(cls, interaction: discord.Interaction) -> RemixForm | None:
        """The form ``interaction`` submits, when it submits a Remix modal."""
        if interaction.type != discord.InteractionType.modal_submit:
            return None
        match = REMIX_TEMPLATE.fullmatch((interaction.data or {}).get("custom_id", ""))
        return cls(int(match["job"]), int(match["index"])) if match else None

    async def acknowledge(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # the answer is the queue position

    async def run(self, interaction: discord.Interaction) -> None:
        await interaction.client.services.actions.on_remix(interaction, self.job_id, self.index)

    async def handle(self, interaction: discord.Interaction) -> None:
        if await self.interaction_check(interaction):
            await self.callback(interaction)


def modal_values(interaction: discord.Interaction) -> dict[str, str]:
    """The submitted text inputs of a modal by custom_id (in action rows or labels, as Discord sends them)."""
    values: dict[str, str] = {}

    def walk(component: dict[str, Any]) -> None:
        if "value" in component and "custom_id" in component:
            values[component["custom_id"]] = component["value"]
        for child in component.get("components", []) + ([component["component"]] if "component" in component else []):
            walk(child)

    for component in (interaction.data or {}).get("components", []):
        walk(component)
    return values

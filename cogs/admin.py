"""/admin: server administration — credits, limits, bans, channels, NSFW, banned words, the server negative
prompt, the queue, hypernetwork module approvals and the audit log.

Discord shows the group only to members with Manage Server (``default_member_permissions``), but a server
owner can change who sees it, so every call is checked again against the member's own permissions.
Every change is written to the audit log with the admin's id.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from cogs.account import forget_prompt
from services import ui
from services.jobs import UserError
from services.text_filter import REGEX_PREFIX
from services.ui import manages_server
from worker.jobs import JobKind

AUDIT_PAGE = 10
MULTIPLIER_CHOICES = [app_commands.Choice(name=k.value, value=k.value) for k in JobKind]  # a price multiplier each


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def fmt_multipliers(multipliers: dict[str, float]) -> str:
    return ", ".join(f"{k} ×{v:g}" for k, v in sorted(multipliers.items()))


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Admin(commands.GroupCog, group_name="admin", group_description="Server administration (Manage Server)"):
    credits = app_commands.Group(name="credits", description="Members' credits and the server's prices")
    channels = app_commands.Group(name="channels", description="Where the bot may be used")
    words = app_commands.Group(name="words", description="Banned prompt words and regexes")
    queue = app_commands.Group(name="queue", description="This server's jobs")
    hypernets_group = app_commands.Group(name="modules", description="Hypernetwork modules shared with the server")

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        super().__init__()

    @property
    def services(self) -> Any:
        return self.bot.services

    # -- permission check on every call (after the tree's acknowledgement and access check) -------------------
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if not manages_server(interaction):
            raise UserError("Only members with the Manage Server permission can use `/admin`.")
        return True

    @staticmethod
    async def reply(interaction: discord.Interaction, text: str = "", *, title: str | None = None) -> None:
        if title is not None:
            kwargs: dict[str, Any] = {"embed": discord.Embed(title=title, description=ui.clip(text, 4000))}
        else:
            kwargs = {"content": ui.clip(text, 2000)}
        await interaction.followup.send(ephemeral=True, **kwargs)  # the tree acknowledged the command

    async def audit(self, interaction: discord.Interaction, action: str, **kwargs: Any) -> None:
        await self.services.admin.audit(interaction.guild_id, interaction.user.id, action, **kwargs)

    # -- credits -------------------------------------------------------------------------------------------
    async def _adjust(self, interaction: discord.Interaction, op: str, user: discord.Member, amount: int, reason: str | None) -> None:
        ledger, guild_id = self.services.ledger, interaction.guild_id
        method = {"grant": ledger.grant, "take": ledger.take, "set": ledger.set_balance}[op]
        before = await ledger.balance(guild_id, user.id)
        after = await method(guild_id, user.id, amount, actor_id=interaction.user.id, reason=reason or f"admin {op}")
        await self.audit(interaction, f"credits.{op}", target_user_id=user.id,
                         details={"amount": amount, "before": before, "after": after, "reason": reason})
        await self.reply(interaction, f"💰 {user.mention}: {before} → **{after}** credits ({op} {amount}).")

    @credits.command(name="grant", description="Give a member credits")
    @app_commands.describe(user="Member", amount="Credits to add", reason="Why (kept in the ledger and audit log)")
    async def credits_grant(self, interaction: discord.Interaction, user: discord.Member,
                            amount: app_commands.Range[int, 1, 1_000_000_000], reason: str | None = None) -> None:
        await self._adjust(interaction, "grant", user, amount, reason)

    @credits.command(name="take", description="Take credits from a member (never below zero)")
    @app_commands.describe(user="Member", amount="Credits to remove", reason="Why (kept in the ledger and audit log)")
    async def credits_take(self, interaction: discord.Interaction, user: discord.Member,
                           amount: app_commands.Range[int, 1, 1_000_000_000], reason: str | None = None) -> None:
        await self._adjust(interaction, "take", user, amount, reason)

    @credits.command(name="set", description="Set a member's balance")
    @app_commands.describe(user="Member", amount="The new balance", reason="Why (kept in the ledger and audit log)")
    async def credits_set(self, interaction: discord.Interaction, user: discord.Member,
                          amount: app_commands.Range[int, 0, 1_000_000_000], reason: str | None = None) -> None:
        await self._adjust(interaction, "set", user, amount, reason)

    @credits.command(name="policy", description="Show or change start balance, top-ups and cost multipliers")
    @app_commands.describe(
        start_balance="Credits a new member starts with",
        topup_floor="Balances below this are topped up to it once per period (0 = no top-ups)",
        topup_period_h="Hours between top-ups",
        kind="A command whose price to scale",
        multiplier="Price multiplier for that command (1 = normal)",
    )
    @app_commands.choices(kind=MULTIPLIER_CHOICES)
    async def credits_policy(
        self,
        interaction: discord.Interaction,
        start_balance: app_commands.Range[int, 0, 1_000_000_000] | None = None,
        topup_floor: app_commands.Range[int, 0, 1_000_000_000] | None = None,
        topup_period_h: app_commands.Range[float, 0.01, 8760.0] | None = None,
        kind: str | None = None,
        multiplier: app_commands.Range[float, 0.0, 100.0] | None = None,
    ) -> None:
        if (kind is None) != (multiplier is None):
            raise UserError("Give both `kind` and `multiplier` to change a price.")
        changes: dict[str, Any] = {}
        if start_balance is not None:
            changes["start_balance"] = start_balance
        if topup_floor is not None:
            changes["topup_floor"] = topup_floor
        if topup_period_h is not None:
            changes["topup_period_s"] = topup_period_h * 3600
        if kind is not None:
            changes["multipliers"] = {kind: multiplier}
        if changes:
            await self.services.admin.set_policy(interaction.guild_id, interaction.user.id, changes)
        p = await self.services.settings.policy(interaction.guild_id)
        text = (
            f"Start balance **{p.start_balance}** · top-up to **{p.topup_floor}** every **{p.topup_period_s / 3600:g} h**\n"
            f"Multipliers: {fmt_multipliers(dict(p.multipliers))}"
        )
        await self.reply(interaction, text, title="Credit policy" + (" updated" if changes else ""))

    # -- limits --------------------------------------------------------------------------------------------
    @app_commands.command(name="limits", description="Show or change request limits (for the server or one channel)")
    @app_commands.describe(
        channel="Change this channel's overrides instead of the server's",
        max_steps="Most denoising steps per image",
        max_area="Largest image area in pixels (e.g. 393216 = 512x768)",
        max_count="Most images per request",
        max_queued="Most waiting jobs per member (server-wide only)",
        max_train_images="Most images per hypernetwork training",
        max_train_steps="Most steps per hypernetwork training",
        reset="Remove the overrides (of the channel if given, else of the server) first",
    )
    async def limits(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel | None = None,
        max_steps: app_commands.Range[int, 1, 1000] | None = None,
        max_area: app_commands.Range[int, 4096, 16_777_216] | None = None,
        max_count: app_commands.Range[int, 1, 10] | None = None,
        max_queued: app_commands.Range[int, 1, 1000] | None = None,
        max_train_images: app_commands.Range[int, 1, 10_000] | None = None,
        max_train_steps: app_commands.Range[int, 1, 1_000_000] | None = None,
        reset: bool = False,
    ) -> None:
        guild_id, channel_id = interaction.guild_id, channel.id if channel else None
        given = dict(max_steps=max_steps, max_area=max_area, max_count=max_count, max_queued=max_queued,
                     max_train_images=max_train_images, max_train_steps=max_train_steps)
        changes = {k: v for k, v in given.items() if v is not None}
        await self.services.admin.set_limits(guild_id, interaction.user.id, channel_id, changes, reset)
        limits = await self.services.settings.limits(guild_id, channel_id)
        where = f"in {channel.mention}" if channel else "on this server"
        await self.reply(interaction, limits.describe(), title=f"Limits {where}" + (" updated" if changes or reset else ""))

    # -- bans ----------------------------------------------------------------------------------------------
    @app_commands.command(name="ban", description="Stop a member from using the bot here; their waiting jobs are refunded")
    @app_commands.describe(user="Member", reason="Shown to them when they try")
    async def ban(self, interaction: discord.Interaction, user: discord.Member, reason: str | None = None) -> None:
        if user.id == interaction.user.id:
            raise UserError("You cannot ban yourself.")
        cancelled = await self.services.rules.ban(interaction.guild_id, user.id, interaction.user.id, reason)
        await self.audit(interaction, "ban", target_user_id=user.id,
                         details={"reason": reason, "cancelled_jobs": [j.id for j in cancelled]})
        refunded = sum(j.cost for j in cancelled)
        await self.reply(interaction, f"🔨 {user.mention} is banned from the bot here"
                         + (f"; {len(cancelled)} job(s) cancelled, {refunded} credits refunded." if cancelled else "."))

    @app_commands.command(name="unban", description="Let a banned member use the bot again")
    async def unban(self, interaction: discord.Interaction, user: discord.Member) -> None:
        if not await self.services.admin.unban(interaction.guild_id, interaction.user.id, user.id):
            raise UserError(f"{user.mention} is not banned.")
        await self.reply(interaction, f"✅ {user.mention} may use the bot again.")

    @app_commands.command(name="bans", description="Members banned from the bot here")
    async def bans(self, interaction: discord.Interaction) -> None:
        rows = await self.services.admin.bans(interaction.guild_id)
        lines = [f"<@{b.user_id}> since {discord.utils.format_dt(b.created_at, 'R')} by <@{b.actor_id}>"
                 + (f" — {b.reason}" if b.reason else "") for b in rows]
        await self.reply(interaction, "\n".join(lines) or "Nobody is banned.", title=f"Bans ({len(rows)})")

    @app_commands.command(name="forget", description="Forget a member here: their pictures, history, favourites, private modules")
    @app_commands.describe(member="The member who asked to be forgotten (or who left)")
    async def forget(self, interaction: discord.Interaction, member: discord.User) -> None:
        await interaction.followup.send(ephemeral=True, **forget_prompt(member.id, yourself=member.id == interaction.user.id))

    # -- channels ------------------------------------------------------------------------------------------
    async def _channel_access(self, interaction: discord.Interaction, channel: discord.TextChannel, access: str) -> None:
        await self.services.admin.set_channel_access(interaction.guild_id, interaction.user.id, channel.id, access)
        await self.reply(interaction, f"{channel.mention}: {access} saved.\n\n{await self._channel_list(interaction.guild_id)}")

    async def _channel_list(self, guild_id: int) -> str:
        channels = await self.services.settings.channels(guild_id)
        allowed = [f"<#{c.channel_id}>" for c in channels if c.enabled and c.allowed]
        denied = [f"<#{c.channel_id}>" for c in channels if not c.enabled]
        limited = [f"<#{c.channel_id}> {dict(c.limits)}" for c in channels if c.limits]
        return "\n".join([
            "Allowed only in: " + ", ".join(allowed) if allowed else "Allowed everywhere the bot can post.",
            "Denied: " + (", ".join(denied) or "none"),
            "Channel limits: " + ("; ".join(limited) or "none"),
        ])

    @channels.command(name="allow", description="Allow the bot here; once any channel is allowed, only allowed ones work")
    async def channels_allow(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        await self._channel_access(interaction, channel, "allow")

    @channels.command(name="deny", description="Turn the bot off in a channel")
    async def channels_deny(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        await self._channel_access(interaction, channel, "deny")

    @channels.command(name="reset", description="Neither allowed nor denied: back to the server default")
    async def channels_reset(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        await self._channel_access(interaction, channel, "reset")

    @channels.command(name="list", description="Allowed and denied channels and channel limits")
    async def channels_list(self, interaction: discord.Interaction) -> None:
        await self.reply(interaction, await self._channel_list(interaction.guild_id), title="Channels")

    # -- NSFW, banned words, server negative -----------------------------------------------------------------
    @app_commands.command(name="nsfw", description="Show or change the rules outside age-restricted channels")
    @app_commands.describe(
        terms="Comma-separated words that make a prompt NSFW (refused outside age-restricted channels)",
        negative="Negative prompt enforced outside age-restricted channels",
        image_check="Run the image safety check on results outside age-restricted channels",
    )
    async def nsfw(self, interaction: discord.Interaction, terms: str | None = None, negative: str | None = None,
                   image_check: bool | None = None) -> None:
        changed = await self.services.admin.set_nsfw(interaction.guild_id, interaction.user.id,
                                                     terms=terms, negative=negative, image_check=image_check)
        rules = (await self.services.settings.guild(interaction.guild_id)).nsfw
        installed = self.services.rules.describe_check()
        text = (
            "NSFW prompts work only in age-restricted channels.\n"
            f"**NSFW terms:** {', '.join(rules.terms.names) or 'none'}\n"
            f"**Enforced negative elsewhere:** {rules.negative or 'none'}\n"
            f"**Image safety check elsewhere:** {'on' if rules.image_check else 'off'} ({installed})"
        )
        await self.reply(interaction, text, title="NSFW rules" + (" updated" if changed else ""))

    @words.command(name="add", description="Ban a word or phrase (whole words), or a regex as re:<pattern>")
    async def words_add(self, interaction: discord.Interaction, word: str) -> None:
        entry = await self.services.admin.add_word(interaction.guild_id, interaction.user.id, word)
        await self.reply(interaction, f"🚫 `{entry}` is banned in prompts.")

    @words.command(name="remove", description="Allow a banned word again")
    async def words_remove(self, interaction: discord.Interaction, word: str) -> None:
        if not await self.services.admin.remove_word(interaction.guild_id, interaction.user.id, word):
            raise UserError(f"`{word}` is not banned; see `/admin words list`.")
        await self.reply(interaction, f"✅ `{word}` is allowed again.")

    @words.command(name="list", description="The banned words and regexes")
    async def words_list(self, interaction: discord.Interaction) -> None:
        banned = (await self.services.settings.guild(interaction.guild_id)).banned
        listed = [(w, "") for w in banned.names]
        listed += [(w, f" — **disabled**: {why}. Remove it and add an RE2 pattern.") for w, why in banned.disabled]
        text = "\n".join(f"`{w}`" + (" (regex)" if w.startswith(REGEX_PREFIX) else "") + note for w, note in listed)
        await self.reply(interaction, text or "No banned words.", title=f"Banned words ({len(listed)})")

    @app_commands.command(name="negative", description="Show or set the negative prompt added to every request here")
    @app_commands.describe(prompt="The server-wide negative prompt", clear="Remove it")
    async def negative(self, interaction: discord.Interaction, prompt: str | None = None, clear: bool = False) -> None:
        if clear or prompt is not None:
            await self.services.admin.set_negative(interaction.guild_id, interaction.user.id, None if clear else prompt)
        current = (await self.services.settings.guild(interaction.guild_id)).negative
        await self.reply(interaction, f"Server negative prompt: {f'`{current}`' if current else 'none'}")

    async def _model_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=name, value=name) for name in self.services.models.matching(current)]

    @app_commands.command(name="model", description="Show or set the model requests here use when they name none")
    @app_commands.describe(name="One of the bot's models", clear="Use the bot's default again")
    @app_commands.autocomplete(name=_model_autocomplete)
    async def model(self, interaction: discord.Interaction, name: str | None = None, clear: bool = False) -> None:
        if clear or name is not None:
            await self.services.settings.set_model(interaction.guild_id, interaction.user.id, None if clear else name)
            await self.audit(interaction, "model.default", details={"model": None if clear else name})
        current = await self.services.models.default_for(interaction.guild_id)
        await self.reply(interaction, f"Default model here: `{current}` (models: {', '.join(self.services.models.names)})")

    # -- queue ---------------------------------------------------------------------------------------------
    @queue.command(name="view", description="Waiting and running jobs on this server")
    async def queue_view(self, interaction: discord.Interaction) -> None:
        q, guild_id = self.services.queue, interaction.guild_id
        jobs = await q.list(guild_id=guild_id, limit=25)
        lines = []
        for job in jobs:
            where = "running" if job.status == "running" else f"#{await q.position(job.id)} in line"
            lines.append(f"`#{job.id}` {where} · <@{job.user_id}> · {job.kind} · {job.cost} credits")
        paused = "⏸️ **Paused** — nothing here starts until `/admin queue resume`.\n" if await q.is_paused(guild_id) else ""
        await self.reply(interaction, paused + ("\n".join(lines) or "No jobs waiting."), title=f"Queue ({len(jobs)})")

    @queue.command(name="cancel", description="Cancel a job on this server; its credits are refunded")
    @app_commands.describe(job="The job number (#id)")
    async def queue_cancel(self, interaction: discord.Interaction, job: app_commands.Range[int, 1]) -> None:
        found = await self.services.queue.get(job)
        if found is None or found.guild_id != interaction.guild_id:
            raise UserError(f"There is no job #{job} on this server.")
        if not await self.services.jobs.cancel(job, interaction.user.id):
            raise UserError(f"Job #{job} already finished ({found.status}).")
        self.services.publisher.status.pop(job, None)
        await self.audit(interaction, "queue.cancel", target_user_id=found.user_id, target_job_id=job)
        await self.reply(interaction, f"🛑 Job #{job} of <@{found.user_id}> cancelled; {found.cost} credits refunded.")

    @queue.command(name="pause", description="Stop starting this server's jobs (running ones finish)")
    async def queue_pause(self, interaction: discord.Interaction) -> None:
        await self.services.queue.pause(interaction.guild_id, interaction.user.id)
        await self.audit(interaction, "queue.pause")
        await self.reply(interaction, "⏸️ The queue is paused on this server. Jobs can still be queued.")

    @queue.command(name="resume", description="Start this server's jobs again")
    async def queue_resume(self, interaction: discord.Interaction) -> None:
        await self.services.queue.resume(interaction.guild_id, interaction.user.id)
        self.services.wake_worker()
        await self.audit(interaction, "queue.resume")
        await self.reply(interaction, "▶️ The queue runs again on this server.")

    # -- the image store -----------------------------------------------------------------------------------
    @app_commands.command(name="storage", description="Disk use of the image store and how long pictures are kept")
    async def storage(self, interaction: discord.Interaction) -> None:
        everything, here = await self.services.admin.storage_use(interaction.guild_id)
        cfg = self.services.config.storage
        kept = (f"pictures older than **{cfg.keep_images_days:g} days** are removed (checked every {cfg.sweep_interval_h:g} h); "
                "favourited ones stay" if cfg.keep_images_days else "pictures are kept forever (`storage.keep_images_days = 0`)")
        await self.reply(interaction, (
            f"**This server's pictures:** {here.files} files, {megabytes(here.bytes)}\n"
            f"**The whole image store** (every server of this bot, uploads included): {everything.files} files, "
            f"{megabytes(everything.bytes)}\n**Retention:** {kept}. The bot's operator sets it in `config.toml` `[storage]`."
        ), title="Image storage")  # fmt: skip

    # -- hypernetwork modules ---------------------------------------------------------------------------------
    async def _review(self, interaction: discord.Interaction, name: str, approve: bool) -> None:
        module = await self.services.admin.review_hypernet(interaction.guild_id, interaction.user.id, name, approve)
        verdict = "now usable by everyone here" if approve else "rejected (only its owner sees it)"
        await self.reply(interaction, f"Module `{name}` by {ui.owner_mention(module.owner_id)} is {verdict}.")

    async def _hypernet_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        if not manages_server(interaction):  # command checks don't run for autocomplete
            return []
        rows = await self.services.admin.shared_hypernets(interaction.guild_id)
        return [app_commands.Choice(name=m.name, value=m.name) for m in rows if current.lower() in m.name.lower()][:25]

    @hypernets_group.command(name="pending", description="Modules members shared that wait for approval")
    async def hypernets_pending(self, interaction: discord.Interaction) -> None:
        rows = await self.services.admin.pending_hypernets(interaction.guild_id)
        lines = [f"`{m.name}` by {ui.owner_mention(m.owner_id)} · shared {discord.utils.format_dt(m.updated_at, 'R')}" for m in rows]
        await self.reply(interaction, "\n".join(lines) or "No modules wait for approval.", title=f"Pending modules ({len(rows)})")

    @hypernets_group.command(name="approve", description="Make a shared module usable by everyone on this server")
    @app_commands.autocomplete(name=_hypernet_autocomplete)
    async def hypernets_approve(self, interaction: discord.Interaction, name: str) -> None:
        await self._review(interaction, name, approve=True)

    @hypernets_group.command(name="reject", description="Refuse (or withdraw) a shared module")
    @app_commands.autocomplete(name=_hypernet_autocomplete)
    async def hypernets_reject(self, interaction: discord.Interaction, name: str) -> None:
        await self._review(interaction, name, approve=False)

    # -- audit log -----------------------------------------------------------------------------------------
    @app_commands.command(name="audit", description="Who changed what, newest first")
    async def audit_log(self, interaction: discord.Interaction, page: app_commands.Range[int, 1, 10_000] = 1) -> None:
        rows = await self.services.admin.audit_page(interaction.guild_id, page, AUDIT_PAGE)
        lines = []
        for e in rows:
            target = (f" → <@{e.target_user_id}>" if e.target_user_id else "") + (f" job #{e.target_job_id}" if e.target_job_id else "")
            details = ", ".join(f"{k}={v}" for k, v in (e.details or {}).items() if v is not None)
            lines.append(f"{discord.utils.format_dt(e.created_at, 'f')} <@{e.actor_id}> **{e.action}**{target}"
                         + (f" · {ui.clip(details, 200)}" if details else ""))
        await self.reply(interaction, "\n".join(lines) or "Nothing on this page.", title=f"Audit log, page {page}")


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(bot))

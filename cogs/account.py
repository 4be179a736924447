"""/credits and /history: a member's balance, ledger and past generations."""

from __future__ import annotations

import asyncio
import io

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

from services import ui
from services.jobs import UserError

HISTORY_PAGE = 5


def thumbnail(data: bytes, size: int = 128) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class HistoryPage(ui.CheckedItem, discord.ui.DynamicItem[discord.ui.Button], template=r"history:(?P<user>[0-9]+):(?P<page>[0-9]+)"):
    """◀ / ▶ under a /history page; pages belong to the member who asked."""

    channel_rules = False  # paging posts nothing: only a ban refuses it

    def __init__(self, user_id: int, page: int, **button) -> None:
        self.user_id, self.page = user_id, page
        super().__init__(discord.ui.Button(custom_id=f"history:{user_id}:{page}", **button))

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["user"]), int(match["page"]))

    async def check(self, interaction: discord.Interaction) -> None:
        if interaction.user.id != self.user_id:
            raise UserError("That is someone else's history; run `/history` for yours.")

    async def run(self, interaction: discord.Interaction) -> None:
        cog: Account = interaction.client.get_cog("Account")
        await interaction.edit_original_response(**await cog.history_page(interaction.guild_id, self.user_id, self.page))


class ForgetButton(ui.CheckedItem, discord.ui.DynamicItem[discord.ui.Button], template=r"forget:(?P<user>[0-9]+)"):
    """Confirms forgetting member ``user`` on this server: the member themself (`/forget-me`, banned or
    not: it touches only their own data) or an admin (`/admin forget`)."""

    channel_rules = False  # it posts nothing in the channel

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        super().__init__(discord.ui.Button(custom_id=f"forget:{user_id}", label="Forget", emoji="🗑️", style=discord.ButtonStyle.danger))

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["user"]))

    async def admit(self, interaction: discord.Interaction) -> None:
        if interaction.user.id != self.user_id:  # an admin confirming: the usual rules
            await super().admit(interaction)

    async def check(self, interaction: discord.Interaction) -> None:
        if interaction.guild_id is None or not (interaction.user.id == self.user_id or ui.manages_server(interaction)):
            raise UserError("Only that member or a server admin can confirm this.")

    async def run(self, interaction: discord.Interaction) -> None:
        cancelled, forgotten = await interaction.client.services.admin.forget(interaction.guild_id, self.user_id, interaction.user.id)
        who = "You are" if interaction.user.id == self.user_id else f"<@{self.user_id}> is"
        lines = [
            f"🗑️ {who} forgotten on this server: {forgotten.images} pictures and the prompts of {len(forgotten.jobs)} jobs "
            f"deleted, {forgotten.favourites} favourite(s) removed.",
            f"{len(cancelled)} waiting job(s) cancelled and {sum(j.cost for j in cancelled)} credits refunded." if cancelled else "",
            f"Private modules deleted: {', '.join(f'`{n}`' for n in forgotten.modules)}." if forgotten.modules else "",
            f"Shared modules kept for the server, credited to a former member: {', '.join(f'`{n}`' for n in forgotten.kept_modules)}."
            if forgotten.kept_modules else "",
            "Messages already posted stay (❌ removes a result). The credit ledger stays, as the books require.",
        ]
        await interaction.edit_original_response(content="\n".join(line for line in lines if line), view=None)


def forget_prompt(user_id: int, yourself: bool) -> dict:
    """The confirmation message of `/forget-me` and `/admin forget`."""
    whose = "your" if yourself else f"<@{user_id}>'s"
    view = discord.ui.View(timeout=None)
    view.add_item(ForgetButton(user_id))
    return {"content": (
        f"This deletes {whose} pictures and history, the prompts of {whose} jobs, {whose} favourites and {whose} "
        f"private modules on this server, and cancels {whose} waiting jobs (refunded). Shared, approved modules stay, "
        "credited to a former member; messages already posted stay; the credit ledger stays. It cannot be undone."
    ), "view": view}  # fmt: skip


class Account(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(HistoryPage, ForgetButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(HistoryPage, ForgetButton)

    @property
    def services(self):
        return self.bot.services

    @app_commands.command(name="credits", description="Your credit balance, next top-up and recent charges")
    async def credits(self, interaction: discord.Interaction) -> None:
        if interaction.guild_id is None:
            raise UserError("Credits belong to a server: use `/credits` in a server channel.")
        guild_id, user_id = interaction.guild_id, interaction.user.id
        balance = await self.services.ledger.balance(guild_id, user_id)
        entries = await self.services.ledger.entries(guild_id, user_id, limit=10)
        next_topup = await self.services.ledger.next_topup(guild_id, user_id)
        embed = discord.Embed(title="Your credits", description=f"**{balance}** credits on this server")
        if next_topup:
            floor = (await self.services.settings.policy(guild_id)).topup_floor
            when = discord.utils.format_dt(next_topup, "R")
            value = f"to {floor} credits {when}" if balance < floor else f"balances below {floor} are raised to {floor}"
            embed.add_field(name="Top-up", value=value, inline=False)
        if entries:
            lines = [
                f"`{e.delta:+6d}` {e.kind}" + (f" · job #{e.job_id}" if e.job_id else "") + (f" · {e.reason}" if e.reason else "")
                for e in entries
            ]
            embed.add_field(name="Recent", value=ui.clip("\n".join(lines), 1024), inline=False)
        await interaction.followup.send(embed=embed, ephemeral=True)

    async def history_page(self, guild_id: int, user_id: int, page: int) -> dict:
        rows = await self.services.images.history(guild_id, user_id, limit=HISTORY_PAGE + 1, offset=page * HISTORY_PAGE)
        more, rows = len(rows) > HISTORY_PAGE, rows[:HISTORY_PAGE]
        if not rows:
            return {"content": "No images yet. Try `/imagine`!" if page == 0 else "No more images.", "embeds": [], "attachments": [], "view": None}
        embeds, files = [], []
        view = discord.ui.View(timeout=None)
        rerolls: set[int] = set()
        for i, row in enumerate(rows):
            params = row.params or {}
            img2img = ui.img2img_note(params.get("denoising_strength"), params.get("extra_noise"))
            embed = discord.Embed(
                title=ui.clip(f"#{row.job_id} · seed {row.seed}{img2img}", 256),
                description=ui.clip(params.get("user_prompt") or params.get("prompt", ""), 300),
            )
            try:
                small = await asyncio.to_thread(thumbnail, await self.services.store.get(row.key))
            except FileNotFoundError:  # removed by the retention policy: the row and its 🔄 stay
                embed.set_footer(text="The picture was removed after this server's retention period; 🔄 makes it again.")
            else:
                name = f"thumb{i}.png"
                files.append(ui.png_file(small, name))
                embed.set_thumbnail(url=f"attachment://{name}")
            embeds.append(embed)
            if row.job_id not in rerolls:  # custom_ids must be unique within a message
                rerolls.add(row.job_id)
                view.add_item(ui.JobButton(row.job_id, "reroll", label=f"🔄 #{row.job_id}", row=0))
        if page > 0:
            view.add_item(HistoryPage(user_id, page - 1, label="◀", row=2))
        if more:
            view.add_item(HistoryPage(user_id, page + 1, label="▶", row=2))
        return {"content": f"Your images, page {page + 1}", "embeds": embeds, "attachments": files, "view": view}

    @app_commands.command(name="history", description="Your recent images; reroll any of them")
    async def history(self, interaction: discord.Interaction) -> None:
        if interaction.guild_id is None:
            raise UserError("History belongs to a server: use `/history` in a server channel.")
        await interaction.edit_original_response(**await self.history_page(interaction.guild_id, interaction.user.id, 0))

    @app_commands.command(name="forget-me", description="Delete your pictures, history, favourites and private modules here",
                          extras={ui.OWN_DATA: True})  # fmt: skip
    @app_commands.guild_only()
    async def forget_me(self, interaction: discord.Interaction) -> None:
        await interaction.followup.send(ephemeral=True, **forget_prompt(interaction.user.id, yourself=True))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Account(bot))

"""/embedding: textual-inversion embeddings (A1111 .pt or .safetensors) — the library's commands (``cogs._modules``)."""

from __future__ import annotations

from discord.ext import commands

from cogs._modules import ModuleCommands


class Embedding(commands.Cog):
    group = ModuleCommands(
        name="embedding", description="Textual-inversion embeddings, used by writing their name", library="embeddings",
        emoji="🔤", how_to_use="Write `{name}` in a prompt or negative prompt to use it.", active=False,
    )  # fmt: skip

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Embedding(bot))

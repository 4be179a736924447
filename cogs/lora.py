"""/lora: LoRA files (kohya/A1111, diffusers, PEFT .safetensors) — the library's commands (``cogs._modules``)."""

from __future__ import annotations

from discord.ext import commands

from cogs._modules import ModuleCommands


class Lora(commands.Cog):
    group = ModuleCommands(
        name="lora", description="LoRA style and character files", library="loras", emoji="🎨",
        how_to_use="Write `<lora:{name}:0.8>` in a prompt, or turn it on for every job with `/lora use {name}`.", active=True,
    )  # fmt: skip

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Lora(bot))

"""The models on offer: config.toml's ``[[models]]`` (or the one ``[model]``), a server's default (``/admin
model``), and what the live-worker registry says of each — a model no worker has ever served here is refused
at once; one whose workers are all down right now is queued, with a note that no worker is online. The bot
knows the models from config alone (it need not load any: ``[worker] embedded = false``)."""

from __future__ import annotations

from typing import Any

from services.config import Config
from services.jobs import UserError


class Models:
    def __init__(self, config: Config, queue: Any, settings: Any) -> None:
        self.config = config
        self.queue = queue
        self.settings = settings

    @property
    def names(self) -> list[str]:
        return list(self.config.models)

    def matching(self, current: str) -> list[str]:
        """Model names for autocomplete: those containing what was typed, the default first."""
        return [name for name in self.names if current.lower() in name.lower()][:25]

    async def default_for(self, guild_id: int) -> str:
        """The server's default model (``/admin model``), or the bot's."""
        chosen = (await self.settings.guild(guild_id)).model
        return chosen if chosen in self.config.models else self.config.default_model

    async def check(self, names: set[str]) -> None:
        """Refuse a model the configuration does not offer, or that no worker has ever served here."""
        states = await self.queue.model_states()
        for name in sorted(names):
            if name not in self.config.models:
                raise UserError(f"There is no model `{name}`; choose one of {', '.join(self.names)}.")
            if name not in states:
                raise UserError(
                    f"No worker has ever served the model `{name}` here, so nothing could run it. "
                    "Choose another model, or ask the bot's operator to start a worker for it."
                )

    async def offline_note(self, names: set[str]) -> str:
        """A line for each of ``names`` that no live worker serves right now (the jobs wait for one)."""
        states = await self.queue.model_states()
        down = [name for name in sorted(names) if name in states and not states[name].live_workers]
        return "\n".join(f"⚠️ No worker for `{name}` is online right now: your job waits in the queue until one is." for name in down)

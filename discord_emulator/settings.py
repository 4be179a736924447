"""Emulator settings: Discord's platform limits, shrinkable in tests."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass
class EmulatorSettings:
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    bot_token: str = "emulator-bot-token"
    bot_name: str = "Diffusion"
    application_name: str = "Diffusion"
    # Interactions
    initial_response_timeout: float = 3.0  # seconds to the first callback, else 10062
    token_lifetime: float = 15 * 60.0  # seconds the interaction token works for follow-ups/edits
    # Messages
    max_content_length: int = 2000
    max_embeds: int = 10
    max_embed_chars: int = 6000
    max_files: int = 10
    attachment_size_limit: int = 10 * MiB  # per file; also sent as the interaction's attachment_size_limit
    max_request_size: int = 25 * MiB  # whole request body
    max_custom_id_length: int = 100
    max_autocomplete_choices: int = 25
    # Gateway
    heartbeat_interval_ms: int = 41250
    allow_privileged_intents: bool = True  # False: IDENTIFY with members/presences/message_content -> 4014
    # World
    default_world: bool = True  # build the two default guilds and test users

"""Textual-inversion embeddings for members: a module library (``services.modules``) of A1111 ``.pt`` and
``.safetensors`` embeddings, checked against the loaded model's text encoders at upload and stored as
``.safetensors``.  A prompt uses one by writing its name (exact, as a whole word), as in A1111; a name
that is an ordinary word of the tokenizer's vocabulary is refused, so an embedding never takes over
other prompts."""

from __future__ import annotations

import asyncio
from typing import Any

from gen_core import embeddings
from services.jobs import UserError
from services.modules import Converted, Library
from storage import ModuleKind


class Embeddings(Library):
    kind = ModuleKind.EMBEDDING
    noun = "embedding"

    def __init__(self, services: Any) -> None:
        super().__init__(services, services.config.embedding.max_file_mb)

    def convert(self, data: bytes, filename: str) -> Converted:
        ti = embeddings.read(data, filename)
        ti.check_fits(self.engine.text_widths)
        meta = {"vectors": ti.count, "made_for": embeddings.family_of(ti.widths), **{k: v[:100] for k, v in ti.meta.items()}}
        return Converted(ti.to_bytes(), meta, "")  # A1111 names an embedding after its file

    async def check_new_name(self, name: str) -> None:
        try:  # the vocabulary is a 49,408-entry table: not on the event loop
            await asyncio.get_running_loop().run_in_executor(None, embeddings.check_name, name, self.engine.tokenizer)
        except embeddings.EmbeddingError as exc:
            raise UserError(f"{exc} Give another with `name:`.") from None

    async def info(self, module: Any) -> list[str]:
        m = module.meta
        lines = [f"Made for {m['made_for']} model · {m['vectors']} vector{'s' if m['vectors'] != 1 else ''} (tokens in a prompt)"]
        if "step" in m:
            lines.append(f"Trained for {m['step']} steps" + (f" on {m['sd_checkpoint_name']}" if "sd_checkpoint_name" in m else ""))
        lines.append(f"In a prompt or negative: write `{module.name}` as a word.")
        return lines

"""LoRA files for members: a module library (``services.modules``) of kohya/A1111, diffusers and PEFT
``.safetensors`` LoRAs, checked from the header alone (no pickle is ever read) against the loaded model's
family at upload.  The file is stored as uploaded; the worker loads it as a PEFT adapter
(``gen_core.lora.LoraAdapters``) for the jobs that name it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gen_core import lora
from services.modules import ActiveLibrary, Converted
from storage import ModuleKind

#: kohya's training metadata worth showing in /lora info, with how to label it.
_KOHYA_FIELDS = {
    "ss_output_name": "name",
    "ss_base_model_version": "base model",
    "ss_sd_model_name": "trained on",
    "ss_network_dim": "dim",
    "ss_network_alpha": "alpha",
    "ss_num_train_images": "images",
    "ss_epoch": "epochs",
}


class Loras(ActiveLibrary):
    kind = ModuleKind.LORA
    noun = "LoRA"

    def __init__(self, services: Any) -> None:
        super().__init__(services, services.config.lora.max_file_mb)

    def convert(self, data: bytes, filename: str) -> Converted:
        if Path(filename).suffix.lower() != ".safetensors":
            raise lora.LoraError("Upload a LoRA as a .safetensors file (.pt/.ckpt files can hold code and are not read).")
        info = lora.inspect(data)
        lora.check_fits(info, self.engine.unet.config.cross_attention_dim)
        meta = {
            "layout": info.layout,
            "rank": info.rank,
            "tensors": info.tensors,
            "made_for": info.made_for,
            "text_encoder": info.text_encoder,
            **{label: info.metadata[key][:100] for key, label in _KOHYA_FIELDS.items() if info.metadata.get(key)},
        }
        return Converted(data, meta, "")  # A1111 names a LoRA after its file

    async def info(self, module: Any) -> list[str]:
        m = module.meta
        lines = [
            f"Made for {m['made_for']} model · {m['layout']} layout · rank {m['rank']} · {m['tensors']} tensors"
            f" · {'UNet and text encoder' if m['text_encoder'] else 'UNet only'}"
        ]
        extra = [f"{label} {m[label]}" for label in _KOHYA_FIELDS.values() if label in m]
        if extra:
            lines.append("Training: " + " · ".join(extra))
        lines.append(f"In a prompt: `<lora:{module.name}:0.8>` (or `<lora:{module.name}:te_weight:unet_weight>`).")
        return lines

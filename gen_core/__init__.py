"""Generation core: Stable Diffusion on diffusers/transformers/torch (no Discord, no SQL)."""

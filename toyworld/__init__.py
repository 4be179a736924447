"""The toy world: procedural captioned pictures, a judge of what a picture shows, and the trainer of a
small Stable Diffusion model that draws them (the sandbox's default model)."""

from pathlib import Path

MODEL_DIR = Path(__file__).parent / "model"  # the shipped model (diffusers folder)

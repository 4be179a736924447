"""Shared fixtures: the tiny offline model is built once per test session."""

from pathlib import Path

import pytest
import torch

from gen_core.tiny import ensure_tiny_model

# On a 2-core machine torch's intra-op threads fight the event loop that the bot and the emulator share
# (a 3-step tiny-model batch then sometimes takes seconds instead of a tenth); one thread keeps tests steady.
torch.set_num_threads(1)

# The Discord emulator and the real bot, available to every test module.
pytest_plugins = ["tests.emulator_fixtures", "tests.bot_fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", family="sdxl")

"""Shared fixtures: the tiny offline model is built once per test session."""

from pathlib import Path

import pytest

from gen_core.tiny import ensure_tiny_model

# The Discord emulator and the real bot, available to every test module.
pytest_plugins = ["tests.emulator_fixtures", "tests.bot_fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny")

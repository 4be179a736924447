"""Shared fixtures: the tiny offline model is built once per test session."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from gen_core.tiny import ensure_tiny_model

# On a 2-core machine torch's intra-op threads fight the event loop that the bot and the emulator share
# (a 3-step tiny-model batch then sometimes takes seconds instead of a tenth); one thread keeps tests steady.
torch.set_num_threads(1)

# Property and fuzz tests (tests/test_fuzz.py): a few hundred cases per target in the suite;
# HYPOTHESIS_PROFILE=long runs 10,000 per target (see README, "Tests").
settings.register_profile("suite", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

# The Discord emulator, the real bot and an S3-compatible server, available to every test module.
pytest_plugins = ["tests.emulator_fixtures", "tests.bot_fixtures", "tests.s3_fixtures"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", family="sdxl")

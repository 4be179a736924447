"""Configuration: the documented defaults, environment overrides and clear errors."""

from pathlib import Path

import pytest

from services.config import Config, ConfigError, build_config, load_config
from toyworld import MODEL_DIR as TOYWORLD_MODEL


def test_shipped_config_equals_embedded_defaults():
    assert load_config("config.toml", env={}) == Config()


def test_environment_overrides_file_values():
    config = build_config({"discord": {"token": "from-file"}}, env={"DISCORD_TOKEN": "from-env", "DISCORD_SYNC_GUILD": "42"})
    assert config.discord.token == "from-env"
    assert config.discord.sync_guild == 42


def test_unknown_keys_and_bad_values_are_reported_together():
    with pytest.raises(ConfigError) as err:
        build_config({"model": {"dtype": "fp8", "colour": "red"}, "workr": {}, "limits": {"max_steps": "many"},
                      "generation": {"guidance_min_sigma": -1.0}}, env={})  # fmt: skip
    text = str(err.value)
    assert "unknown key model.colour" in text
    assert "unknown section [workr]" in text
    assert "model.dtype = 'fp8'" in text
    assert "limits.max_steps: expected int" in text
    assert "generation.guidance_min_sigma must be at least 0" in text


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_default_database_lives_in_data_dir():
    config = build_config({"storage": {"data_dir": "/srv/bot"}}, env={})
    assert config.database_url == "sqlite+aiosqlite:////srv/bot/bot.db"
    assert config.model_path == TOYWORLD_MODEL  # the shipped toy-world model, wherever the data lives


def test_the_image_store_is_a_folder_or_an_s3_bucket():
    assert build_config({"storage": {"data_dir": "d"}}, env={}).images == str(Path("d") / "images")
    assert build_config({}, env={"BOT_IMAGES": "s3://bucket-1/p"}).images == "s3://bucket-1/p"
    for wrong in ("http://minio/bucket", "s3://", "s3://Bad_Bucket/x"):
        with pytest.raises(ConfigError, match="storage.images"):
            build_config({"storage": {"images": wrong}}, env={})

"""bot.py's command line: clear start-up errors and the `migrate` command."""

import sqlite3

import bot


def test_missing_token_explains_how_to_get_one(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("BOT_DATA_DIR", str(tmp_path))
    assert bot.main(["--config", "config.toml"]) == 2
    err = capsys.readouterr().err
    assert "DISCORD_TOKEN" in err and "--sandbox" in err


def test_bad_config_is_reported_and_exits(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\ndtype = "fp8"\nwhat = 1\n')
    assert bot.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.dtype" in err and "unknown key model.what" in err


def test_migrate_creates_the_schema(monkeypatch, tmp_path):
    monkeypatch.setenv("BOT_DATA_DIR", str(tmp_path))
    assert bot.main(["migrate"]) == 0
    tables = {r[0] for r in sqlite3.connect(tmp_path / "bot.db").execute("select name from sqlite_master where type='table'")}
    assert {"jobs", "ledger_entries", "accounts", "images"} <= tables

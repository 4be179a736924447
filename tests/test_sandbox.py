"""`python bot.py --sandbox`: the page served by bot.py, and the terminal driver (`--terminal`) in a whole session."""

import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp

from sandbox import has_graphical_browser
from sandbox.terminal import parse_command_line, run_terminal
from services.config import build_config

ROOT = Path(__file__).resolve().parents[1]


def test_parse_command_line():
    assert parse_command_line("/imagine prompt:a cat, (cute:1.2) count:2 cfg:6.5 quality:false") == (
        "imagine",
        {"prompt": "a cat, (cute:1.2)", "count": 2, "cfg": 6.5, "quality": False},
    )
    assert parse_command_line("/credits") == ("credits", {})
    known = {"mix": {"prompts", "steps"}}
    assert parse_command_line("/mix prompts:cat:0.7 | kitten:0.3 steps:4", known.get) == (
        "mix",
        {"prompts": "cat:0.7 | kitten:0.3", "steps": 4},
    )


async def test_sandbox_session_saves_images(tmp_path, tiny_model_dir, capsys):
    config = build_config(
        {"storage": {"data_dir": str(tmp_path)}, "model": {"path": str(tiny_model_dir)}, "generation": {"default_steps": 2}},
        env={},
    )
    out = tmp_path / "out"

    async def lines():
        yield "/credits"
        yield "/imagine prompt:a red fox aspect:square count:2"
        for _ in range(600):
            if len(list(out.glob("job*.png"))) == 2:
                break
            await asyncio.sleep(0.05)
        yield "react 1 🔄"
        for _ in range(600):
            if len(list(out.glob("job*.png"))) == 4:
                break
            await asyncio.sleep(0.05)
        yield "quit"

    await run_terminal(config, lines())
    printed = capsys.readouterr().out
    assert "Sandbox ready" in printed
    assert len(list(out.glob("job*.png"))) == 4
    assert "a red fox" in printed
    assert "[only you]" in printed and "Your credits" in printed  # ephemeral replies are shown to the driver


async def test_bot_py_sandbox_serves_the_page_on_the_given_port_until_terminated(tmp_path, tiny_model_dir):
    with socket.socket() as probe:  # a port that is free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "BOT_DATA_DIR": str(tmp_path), "BOT_MODEL_PATH": str(tiny_model_dir)}
    env.pop("DISPLAY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "bot.py", "--sandbox", "--port", str(port), "--no-browser",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        assert line == f"Sandbox page: http://127.0.0.1:{port}/\n"
        url = line.split()[-1]
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as page:
                assert page.status == 200 and "/static/sandbox.js" in await page.text()
            async with http.get(url + "static/sandbox.js") as script:
                assert script.status == 200
            async with http.ws_connect(url + "ws") as ws:
                await ws.send_json({"user": "bob"})
                state = await ws.receive_json(timeout=10)
            assert state["me"] == "bob" and [c["name"] for c in state["guild"]["channels"]] == ["general", "nsfw", "art", "no-files"]
            general = state["guild"]["channels"][0]["id"]
            async with http.get(url + "api/commands", params={"user": "bob", "channel": general}) as answer:
                commands = await answer.json()
        assert "imagine" in [c["name"] for c in commands["commands"]]
        assert all(c["name"].startswith("admin") for c in commands["hidden"])
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_no_browser_is_opened_without_a_desktop(monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    assert sys.platform in ("darwin", "win32") or not has_graphical_browser()

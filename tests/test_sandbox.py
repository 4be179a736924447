"""`python bot.py --sandbox --terminal`: the terminal driver and a whole session against the emulator."""

import asyncio

from sandbox.terminal import parse_command_line, run_terminal
from services.config import build_config


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

"""The sandbox page in a real browser (Debian's Chromium through Playwright), through the real bot.

One sandbox (emulator, bot on the tiny model, page server) and one browser serve the whole module;
each test gets a fresh page. Screenshots go to the test's tmp_path; the last one's path is printed, so
a failing test shows where to look.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright, expect

from sandbox import SandboxPage, running_sandbox
from services.config import build_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")  # Debian's: apt-get install chromium
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULT = 'img[alt^="job"]'


class Site:
    def __init__(self, sandbox, url: str) -> None:
        self.sandbox, self.url = sandbox, url
        self.emu = sandbox.emu

    async def job(self, page_message_text: str):
        number = int(re.search(r"job #(\d+)", page_message_text).group(1))
        return await self.sandbox.bot.services.queue.get(number)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory, tiny_model_dir) -> AsyncIterator[Site]:
    config = build_config(
        {
            "model": {"path": str(tiny_model_dir)},
            "storage": {"data_dir": str(tmp_path_factory.mktemp("sandbox"))},
            "worker": {"progress_interval_s": 0.05, "poll_interval_s": 0.05, "preview_every": 1},
            "generation": {"default_steps": 3, "default_aspect": "256x256", "max_area": 256 * 384},
            "edit": {"fast_embed_steps": 3, "fast_tune_steps": 3},
        },
        env={},
    )
    async with running_sandbox(config) as sandbox:
        page = SandboxPage(sandbox)
        url = await page.start()
        try:
            yield Site(sandbox, url)
        finally:
            await page.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM)"
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(site: Site, browser: Browser, tmp_path: Path) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(site.url)
    await expect(page.locator("body[data-me=alice]")).to_have_count(1)
    try:
        yield page
    finally:
        print(f"screenshot of the page at the end: {await shot(page, tmp_path, 'end')}")
        await context.close()
    assert errors == [], f"script errors on the page: {errors}"


async def shot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path))
    return path


async def act_as(page: Page, name: str) -> None:
    await page.select_option("#member", name)
    await expect(page.locator(f"body[data-me={name}]")).to_have_count(1)


async def open_channel(page: Page, name: str) -> None:
    await page.click(f'#channels button[data-channel="{name}"]')
    await expect(page.locator("#channel-title")).to_have_text(f"#{name}")


async def open_command(page: Page, name: str) -> None:
    await page.fill("#input", f"/{name}")
    await page.click(f'#picker li[data-command="{name}"]')


async def fill_options(page: Page, **options) -> None:
    for name, value in options.items():
        field = page.locator(f'#fields [data-option="{name}"]')
        if not await field.count():
            await page.click(f'#optional button[data-option="{name}"]')
        control = field.locator("input, select").first
        kind = await control.evaluate("e => e.tagName === 'SELECT' ? 'select' : e.type")
        if kind == "select":
            await control.select_option(label=str(value))
        elif kind == "file":
            await control.set_input_files(str(value))
        else:
            await control.fill(str(value))


async def run_command(page: Page, name: str, **options) -> None:
    await open_command(page, name)
    await fill_options(page, **options)
    await page.click("#command-send")
    await expect(page.locator("#command-form")).to_be_hidden()


def results(page: Page):
    return page.locator(".msg:not(.ephemeral)", has=page.locator(RESULT))


async def test_imagine_with_options_shows_progress_then_the_image_and_buttons_and_reactions_work(site: Site, page: Page, tmp_path):
    await page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            for (const img of document.querySelectorAll('#messages img')) if (!window.seen.includes(img.alt)) window.seen.push(img.alt);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true});
    }""")
    await open_command(page, "imagine")
    interactions = len(site.emu.interactions)
    await page.click("#command-send")  # the required prompt is empty: the client refuses, like Discord's
    await expect(page.locator('[data-option="prompt"] .field-error')).to_have_text("This field is required.")
    assert len(site.emu.interactions) == interactions
    await fill_options(page, prompt="a red fox in the snow", steps=4, count=2)
    await page.click('#optional button[data-option="aspect"]')
    await page.fill('[data-option="aspect"] input', "squ")  # the bot answers the autocomplete
    suggestion = page.locator('[data-option="aspect"] .suggestions li', has_text="square").first
    await suggestion.click()
    aspect = await page.input_value('[data-option="aspect"] input')
    await page.click("#command-send")

    first = results(page).first
    await expect(first.locator(RESULT)).to_have_count(2, timeout=30_000)
    seen = await page.evaluate("window.seen")
    assert "preview.png" in seen and seen.index("preview.png") < seen.index(next(s for s in seen if s.startswith("job"))), seen
    await expect(page.locator('img[alt="preview.png"]')).to_have_count(0)  # the progress message was deleted
    text = await first.locator(".content").inner_text()
    job = await site.job(text)
    assert job.kind == "imagine" and job.params["steps"] == 4 and job.params["count"] == 2, job.params
    assert f"{job.params['width']}:{job.params['height']}" == aspect or aspect.replace("x", "×") in text
    await shot(page, tmp_path, "imagine")

    await first.locator(RESULT).first.click()  # enlarge: the PNG's parameters are shown
    await expect(page.locator("#parameters")).to_contain_text("Steps: 4")
    await expect(page.locator("#parameters")).to_contain_text("a red fox in the snow")
    await shot(page, tmp_path, "enlarged")
    await page.keyboard.press("Escape")

    await first.locator("button.btn", has_text="V1 Strong").click()
    await expect(results(page)).to_have_count(2, timeout=30_000)
    variation = await site.job(await results(page).nth(1).locator(".content").inner_text())
    assert variation.params.get("mode") == "variation", variation.params

    await first.locator(".add-reaction").click()
    await page.click('#emoji-quick button[title="🔄"]')
    await expect(first.locator('.reaction.me[data-emoji="🔄"] .count')).to_have_text("2")  # the bot's and alice's
    await expect(results(page)).to_have_count(3, timeout=30_000)
    reroll = await site.job(await results(page).nth(2).locator(".content").inner_text())
    assert reroll.kind == "imagine" and reroll.params["seed"] != job.params["seed"]
    await first.locator('.reaction.me[data-emoji="🔄"]').click()  # a click on one's own reaction removes it
    await expect(first.locator('.reaction[data-emoji="🔄"]:not(.me) .count')).to_have_text("1")
    assert [u.name for u in site.emu.messages[int(await first.get_attribute("data-id"))].reaction_users("🔄")] == ["Diffusion"]

    await first.locator(".add-reaction").click()  # any emoji, typed: ✉️ sends the parameters by DM
    await page.fill("#emoji-input", "✉️")
    await page.press("#emoji-input", "Enter")
    await expect(page.locator("#dms button.unread")).to_have_count(1, timeout=15_000)
    await page.click("#dms button")
    await expect(page.locator('#messages .msg[data-author="Diffusion"]').first).to_contain_text("a red fox in the snow")
    await shot(page, tmp_path, "dm")


def picture(path: Path) -> Path:
    pixels = (np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


async def test_uploaded_pngs_go_to_edit_and_outpaint(site: Site, page: Page, tmp_path):
    upload = picture(tmp_path / "cake.png")
    await open_channel(page, "art")
    await run_command(page, "edit", image=upload, prompt="a blue square", seed=7)
    await expect(results(page)).to_have_count(1, timeout=60_000)
    edited = await site.job(await results(page).first.locator(".content").inner_text())
    assert edited.kind == "edit" and edited.params["prompt"].startswith("a blue square")

    await run_command(page, "outpaint", image=upload, direction="➡ right", prompt="more of it")
    await expect(results(page)).to_have_count(2, timeout=60_000)
    outpainted = results(page).nth(1)
    assert (await site.job(await outpainted.locator(".content").inner_text())).kind == "outpaint"
    await expect(outpainted.locator("button.btn", has_text="P1")).to_have_count(1)
    await shot(page, tmp_path, "outpaint")


async def test_an_ephemeral_reply_is_shown_to_its_member_only(site: Site, page: Page, tmp_path):
    await open_channel(page, "no-files")
    await run_command(page, "imagine", prompt="a cat")
    refusal = page.locator(".msg.ephemeral", has_text="can't post images")
    await expect(refusal).to_contain_text("Only you can see this", timeout=15_000)
    message_id = await refusal.get_attribute("data-id")
    await shot(page, tmp_path, "alice")
    await act_as(page, "bob")
    await expect(page.locator("#channel-title")).to_have_text("#no-files")
    await expect(page.locator(f'.msg[data-id="{message_id}"]')).to_have_count(0)
    await shot(page, tmp_path, "bob")
    await act_as(page, "alice")
    await expect(page.locator(f'.msg[data-id="{message_id}"]')).to_have_count(1)


async def test_admin_is_hidden_from_alice_and_works_for_the_admin(site: Site, page: Page, tmp_path):
    emu = site.emu
    await page.fill("#input", "/admin")
    await expect(page.locator("#picker .hidden-command")).to_contain_text("hidden from alice")
    await expect(page.locator("#picker .hidden-command")).to_contain_text("Manage Server")
    interactions = len(emu.interactions)
    await page.press("#input", "Enter")
    await expect(page.locator("#command-form")).to_be_hidden()
    assert len(emu.interactions) == interactions

    await act_as(page, "admin")
    bob = emu.user("bob")
    balance = await site.sandbox.bot.services.ledger.balance(emu.guild().id, bob.id)
    await run_command(page, "admin credits grant", user="bob", amount=5)
    reply = page.locator(".msg.ephemeral", has_text="credits (grant 5)")
    await expect(reply).to_contain_text(f"→ {balance + 5} credits", timeout=15_000)
    assert await site.sandbox.bot.services.ledger.balance(emu.guild().id, bob.id) == balance + 5
    await shot(page, tmp_path, "admin")


async def test_the_page_fits_from_1280_down_to_400_pixels_wide(site: Site, page: Page, tmp_path):
    await page.fill("#input", "a-long-word-without-spaces-" * 12)
    await page.press("#input", "Enter")
    await expect(page.locator('.msg[data-author="alice"]').last).to_contain_text("a-long-word")
    await open_command(page, "imagine")
    for name in await page.locator("#optional button").evaluate_all("bs => bs.map(b => b.dataset.option)"):
        await page.click(f'#optional button[data-option="{name}"]')
    for width in (1280, 800, 400):
        await page.set_viewport_size({"width": width, "height": 800})
        wider = await page.evaluate("""() => [...document.querySelectorAll('#app *')]
            .filter(e => e.getBoundingClientRect().right > innerWidth + 1)
            .map(e => e.id || e.className || e.tagName)""")
        assert wider == [], f"at {width} px these stick out: {wider}"
        assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        await expect(page.locator("#command-send")).to_be_in_viewport()
        await expect(page.locator(".msg").last).to_be_in_viewport()  # the list stays at the newest message
        await shot(page, tmp_path, f"width-{width}")


async def test_remix_opens_a_form_prefilled_with_the_prompt_and_submits_the_new_text(site: Site, page: Page, tmp_path):
    await open_channel(page, "art")
    await run_command(page, "imagine", prompt="a red circle", negative="blurry")
    first = results(page).last
    await expect(first.locator(RESULT)).to_have_count(1, timeout=30_000)
    job = await site.job(await first.locator(".content").inner_text())
    count = await results(page).count()

    await first.locator("button.btn", has_text="Remix").click()
    form = page.locator("#modal-form")
    await expect(form).to_be_visible()
    await expect(page.locator("#modal-title")).to_have_text("Remix")
    await expect(page.locator("#modal-prompt")).to_have_value("a red circle")
    await expect(page.locator("#modal-negative")).to_have_value(job.params["negative"])
    await shot(page, tmp_path, "remix-form")

    interactions = len(site.emu.interactions)
    await page.fill("#modal-prompt", "  ")  # the prompt is required: the client refuses, like Discord's
    await page.click("#modal-submit")
    await expect(form.locator('[data-input="prompt"] .field-error')).to_have_text("This field is required.")
    assert len(site.emu.interactions) == interactions

    await page.fill("#modal-prompt", "a blue circle")
    await page.fill("#modal-negative", "ugly")
    await page.click("#modal-submit")
    await expect(form).to_be_hidden()
    await expect(results(page)).to_have_count(count + 1, timeout=30_000)
    remix = await site.job(await results(page).last.locator(".content").inner_text())
    assert remix.params["user_prompt"] == "a blue circle" and remix.params["negative"].startswith("ugly")
    assert remix.params["mode"] == "variation" and remix.params["init_image"] == job.result["images"][0]["key"]
    await expect(results(page).last).to_contain_text("strength 0.7")
    await shot(page, tmp_path, "remixed")

"""Property and fuzz tests: whatever a member sends, the only way out is a clear refusal.

Each target runs a few hundred cases in the suite; ``HYPOTHESIS_PROFILE=long`` runs 10,000 per
target (``HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py -q``).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gen_core import hypernetwork as H
from gen_core.archives import ArchiveError, ArchiveLimits, open_zip, read_member
from gen_core.buckets import parse_aspect, scale_buckets
from gen_core.images import ImageInputError, load_image
from gen_core.mix import MixError, parse_recipe
from gen_core.prompts import BREAK, PromptError, count_tokens, parse_prompt_attention, strip_extra_networks
from services import ui
from services.hypernet import TrainingCaps, read_training_zip
from services.jobs import UserError, expand_permutations
from services.text_filter import compile_entries, model_text
from storage import Database, InsufficientCredits, JobQueue, Ledger, QueueFull
from tests.test_archives import pt_bomb, zipped
from tests.test_hypernetwork import a1111_file
from tests.test_storage_support import DEFAULT_POLICY, FakeClock, spec

PROMPT_CHARS = st.sampled_from(list("ab ()[]{}:,|\\<>.-0123456789") + ["BREAK", "nude", "\u200b", "ｎ", ":1.5", "<lora:x:1>", "AND"])
prompts = st.lists(PROMPT_CHARS, max_size=60).map("".join)
BUCKETS = scale_buckets(512 * 768)


@given(prompts)
def test_prompt_parsing_never_raises_and_keeps_every_word(text):
    runs = parse_prompt_attention(text)
    assert all(run == BREAK or (isinstance(run[0], str) and isinstance(run[1], float)) for run in runs)
    letters = re.sub(r"[^a-z]|break", "", "".join(r[0] for r in runs if r != BREAK).lower())
    assert letters == re.sub(r"[^a-z]|break", "", text.replace("\\", "").lower())  # syntax goes, words stay
    try:
        strip_extra_networks(text)
    except PromptError:
        pass
    model_text(text)


@given(st.sampled_from(["nude", "spaceship", "bad word"]), st.data())
def test_syntax_inside_a_banned_word_never_hides_it(word, data):
    """Empty brackets, weights around the word, zero-width characters and case inside it: still caught."""
    cut = data.draw(st.integers(1, len(word) - 1))
    noise = data.draw(st.sampled_from(["()", "[]", "\u200b", "\u00ad", "(:1)", "{}", "\u2060"]))
    wrapped = data.draw(st.sampled_from(["{}", "({})", "({}:1.3)", "[{}]", "a {} b", "{}, cat", "BREAK {}"]))
    text = wrapped.format(word[:cut] + noise + word[cut:])
    text = "".join(c.upper() if data.draw(st.booleans()) else c for c in text) if "BREAK" not in text else text
    assert compile_entries((word,)).first_match(text) == word


def _regex_permutations(prompt: str, limit: int) -> list[str]:
    """The former implementation (a backtracking regex): the oracle on short prompts."""
    pattern = re.compile(r"\{([^{}]*,[^{}]*)\}")
    groups = [[part.strip() for part in m.group(1).split(",")] for m in pattern.finditer(prompt)]
    if not groups:
        return [prompt]
    if math.prod(len(g) for g in groups) > limit:
        raise UserError("too many")
    pieces = pattern.split(prompt)
    out = []
    for combo in itertools.product(*groups):
        text = pieces[0]
        for choice, tail in zip(combo, pieces[2::2], strict=True):
            text += choice + tail
        out.append(text)
    return out


@given(st.lists(st.sampled_from(list("ab{},  ")), max_size=30).map("".join))
def test_permutations_match_the_former_regex(prompt):
    try:
        expected = _regex_permutations(prompt, 8)
    except UserError:
        with pytest.raises(UserError):
            expand_permutations(prompt, 8)
        return
    assert expand_permutations(prompt, 8) == expected


@given(st.text(max_size=80))
def test_mix_recipes_and_aspects_refuse_clearly(text):
    try:
        parse_recipe(text)
    except MixError:
        pass
    try:
        parse_aspect(text, BUCKETS)
    except ValueError:
        pass


@given(st.text(max_size=60), st.lists(st.text(max_size=40), max_size=3))
def test_custom_ids_of_any_message_are_read_safely(content, ids):
    message = {"content": content, "components": [{"type": 1, "components": [{"type": 2, "custom_id": i} for i in ids]}]}
    job_id = ui.job_id_from_message(message)
    assert job_id is None or any(i.startswith(f"job:{job_id}:") for i in ids)


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


SEEDS = [_png(8, 8), _png(300, 2), _png(4097, 4097)]  # ordinary, odd, over the pixel cap


@given(st.one_of(st.binary(max_size=2000), st.tuples(st.sampled_from(range(3)), st.data())))
def test_attachments_decode_or_are_refused(case):
    if isinstance(case, tuple):  # a real PNG, truncated or with bytes flipped
        index, data = case
        raw = bytearray(SEEDS[index])
        for _ in range(data.draw(st.integers(0, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        case = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    try:
        image = load_image(case, max_pixels=4096 * 4096)
    except ImageInputError:
        return
    assert image.mode == "RGB" and image.width * image.height <= 4096 * 4096


ZIP_LIMITS = ArchiveLimits(max_members=64, max_member_bytes=2**20, max_total_bytes=4 * 2**20, max_ratio=100)
ZIP_SEEDS = [zipped({"a.png": _png(8, 8), "a.txt": b"cat"}), pt_bomb(2**16), zipped({f"{i}": b"" for i in range(100)})]
CAPS = TrainingCaps(max_images=8, max_pixels=4096 * 4096, max_total_pixels=2**24, max_bytes=2**20)


def _mutated(seeds: list[bytes], data) -> bytes:
    raw = bytearray(seeds[data.draw(st.integers(0, len(seeds) - 1))])
    for _ in range(data.draw(st.integers(0, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    return bytes(raw[: data.draw(st.integers(0, len(raw)))])


@given(st.data())
def test_zips_open_or_are_refused(data):
    blob = data.draw(st.one_of(st.binary(max_size=500), st.just(None)))
    blob = _mutated(ZIP_SEEDS, data) if blob is None else blob
    try:
        archive = open_zip(blob, ZIP_LIMITS)
        for info in archive.infolist():
            read_member(archive, info)
    except ArchiveError:
        pass
    try:
        read_training_zip(blob, CAPS, BUCKETS)
    except UserError:
        pass


MODULE_SEEDS = [a1111_file((32,))[0], H.load_bytes(a1111_file((32,))[0], "x.pt").to_bytes(), pt_bomb(2**16)]


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), st.sampled_from(["x.pt", "x.safetensors", "x.bin"]))
def test_module_files_load_or_are_refused(data, name):
    try:
        H.load_bytes(_mutated(MODULE_SEEDS, data), name)
    except H.HypernetworkError:
        pass


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tiny_model_dir / "tokenizer"))


@given(text=prompts)
def test_token_counts_with_a_limit_never_undercount_a_refusal(tokenizer, text):
    full = count_tokens(text, tokenizer)
    bounded = count_tokens(text, tokenizer, limit=5)
    assert bounded == full or (bounded > 5 and full >= bounded)


# -- the ledger under random interleavings ---------------------------------------------------------------------

OPS = st.lists(
    st.tuples(st.sampled_from(["enqueue", "claim", "complete", "fail", "cancel", "grant", "take", "crash"]),
              st.integers(1, 3), st.integers(0, 40)),
    max_size=25,
)  # fmt: skip


@pytest.fixture(scope="module")
def ledger_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("ledger") / "template.db"

    async def make():
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.upgrade()
        await db.close()

    asyncio.run(make())
    return path


# each case opens a database: 50 in the suite, the profile's count (10,000) in a long run
@settings(max_examples=50 if settings.default.max_examples < 1000 else settings.default.max_examples)
@given(ops=OPS)
def test_ledger_invariants_hold_under_any_interleaving(ledger_template, tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("run") / "bot.db"
    shutil.copy(ledger_template, path)
    asyncio.run(_run_ledger(path, ops))


async def _run_ledger(path, ops) -> None:
    clock = FakeClock()
    db = Database(f"sqlite+aiosqlite:///{path}", clock=clock)
    ledger, queue = Ledger(db, DEFAULT_POLICY), JobQueue(db, DEFAULT_POLICY)
    jobs: list[int] = []
    try:
        for op, user, amount in ops:
            if op == "enqueue":
                try:
                    job, _ = await queue.enqueue(spec(user, cost=amount))
                    jobs.append(job.id)
                except (InsufficientCredits, QueueFull):
                    pass
            elif op == "claim":
                await queue.claim("w", max_batch=2, lease_s=60)
            elif op in ("complete", "fail", "cancel") and jobs:
                job_id = jobs[amount % len(jobs)]
                if op == "complete":
                    await queue.complete(job_id, {"images": []})
                elif op == "fail":
                    await queue.fail(job_id, "boom")
                else:
                    await queue.cancel(job_id, user)
            elif op == "grant" and amount:
                await ledger.grant(100, user, amount, actor_id=0, reason="fuzz")
            elif op == "take" and amount:
                await ledger.take(100, user, amount, actor_id=0, reason="fuzz")
            elif op == "crash":  # the worker died: its leases run out
                clock.advance(120)
                await queue.requeue_expired(max_attempts=2)
            assert await ledger.check_invariant() == []
            for u in (1, 2, 3):
                assert await ledger.balance(100, u) >= 0
    finally:
        await db.close()

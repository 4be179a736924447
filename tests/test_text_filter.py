"""Filters match the text the model will see: evasions are caught, harmless words pass, regexes run in linear time."""

from __future__ import annotations

import pytest

from services.config import ModerationConfig
from services.settings import split_terms
from services.text_filter import PatternError, compile_entries, compile_pattern, model_text

NSFW = compile_entries(split_terms(ModerationConfig().nsfw_terms))
#: A strict server's list: words whose letters hide inside harmless ones.
BANNED = compile_entries(("rapist", "rape", "ass", "cunt", "cock", "sex", "anal", "tit", "cum", "nude", "bad word"))


@pytest.mark.parametrize(
    "prompt",
    [
        "nude woman", "nu()de woman", "nu[]de", "(nu()de:1.5)", "((nu[]de))", "nu(:1)de woman",
        "ｎｕｄｅ woman", "NUDE", "nu\u200bde", "nu\u00adde", "n\u200du\u2060de", "nudes", "nudity",
        "a <lora:clothes:1>nude<hypernet:x:0.5>", "{nude}", "cat BREAK nude", "\\(nude\\)", "(cat)nude",
        "cat:0.5 | nude:0.5", "nude::1 woman", "[nude|clothed]",
        "nud\u0435 woman", "n\u057dde", "\u039dUDE", "NUD\u0415", "\u0578\u057dd\u0435", "ｎｕｄ\u0435", "nu\u200bd\u0435",
        "cat | nu()de:-1", "cat::1 n\u057dde::-1",
    ],
)  # fmt: skip
def test_evasions_are_caught(prompt):
    assert NSFW.first_match(prompt) is not None
    assert BANNED.first_match(prompt) == "nude"


HARMLESS = [
    "therapist", "class", "assassin", "Scunthorpe", "cocktail", "sextant", "nudibranch", "Essex", "analysis",
    "a therapist in a classroom", "grapefruit", "title", "document", "cucumber", "Middlesex", "peacock",
    "shuttlecock", "titanic", "passage", "bass guitar", "circumstance", "sussex coast", "scrape", "nudge",
    "(therapist:1.2)", "[classic] BREAK (((assassin)))", "bad wordy", "cat, grass, sky",
    "cumulus clouds over a canal", "analog synthesizer", "drapes and grapes", "a titmouse on a bassoon", "Hancock",
    "Café crème", "a naïve façade", "Istanbul, kız kulesi", "sexagenarian sextet",
    # other scripts, written wholly in them: never spelled in Latin (only a word that mixes scripts is)
    "красивая кошка в саду, акварель", "сосна у моря", "Сахар и кокос", "секретарь за столом", "ТАКСИ",
    "Ελληνικό νησί με λευκά σπίτια", "μια γάτα στον ήλιο", "ΚΑΦΕΣ", "猫と桜、水彩画", "夕焼けの富士山", "ネコ",
]  # fmt: skip


@pytest.mark.parametrize("prompt", HARMLESS)
def test_harmless_words_pass(prompt):
    assert BANNED.first_match(prompt) is None and NSFW.first_match(prompt) is None


@pytest.mark.parametrize(
    ("entry", "text"),
    [("sex", "sexes"), ("tit", "tits"), ("ass", "asses"), ("pussy", "pussies"), ("rape", "raped"), ("rape", "raping"),
     ("bad word", "bad-words"), ("bad word", "(bad) [word]"), ("bad word", "BAD\u200b WORD")],
)  # fmt: skip
def test_word_forms_and_phrases(entry, text):
    assert compile_entries((entry,)).first_match(text) == entry


def test_model_text_is_what_the_encoder_reads():
    assert model_text("(nu()de:1.5) ｗｏｍａｎ <lora:x:1>") == "nude woman"
    assert model_text("nu(d)e") == "nu d e"  # separate runs are tokenized separately: not the word
    assert model_text("a BREAK b") == "a b"
    assert model_text("(\u039dUD\u0415:1.2) w\u043em\u0430n") == "nude woman"  # Greek Ν, Cyrillic Е, о, а
    assert model_text("кошка ΚΑΦΕΣ") == "кошка καφεσ"  # wholly Cyrillic, wholly Greek: as written


def test_a_banned_word_in_another_script_matches_that_script():
    russian = compile_entries(("секс",))
    assert russian.first_match("СЕКС") == "секс" and russian.first_match("sex") is None


def test_regexes_run_on_re2_in_linear_time():
    catastrophic = compile_entries(("re:(a+)+$",))
    assert catastrophic.disabled == ()
    assert catastrophic.first_match("a" * 100_000 + "!") is None  # Python's re would run for ages
    assert catastrophic.first_match("xaaa") == "re:(a+)+$"


def test_patterns_re2_cannot_run_are_disabled_not_fatal():
    compiled = compile_entries(("cat", "re:(a)\\1", "re:(?<=x)y"))
    assert [e for e, _ in compiled.entries] == ["cat"]
    assert [e for e, _ in compiled.disabled] == ["re:(a)\\1", "re:(?<=x)y"]
    assert compiled.first_match("a cat") == "cat"
    with pytest.raises(PatternError, match="at most 500"):
        compile_pattern("a" * 501)

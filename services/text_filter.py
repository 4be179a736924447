"""Word filters that match the text the model will see, not the text the member typed.

A prompt is reduced to its words before any banned word or NSFW term is looked for
(:func:`model_text`): Unicode NFKC (fullwidth letters become ASCII) and case folding, Latin
look-alikes from other scripts in a word that mixes scripts (``nudе`` with a Cyrillic е) read as the
Latin letters they imitate (words wholly in Cyrillic, Greek, Japanese … are left alone), invisible
format characters (zero-width spaces and joiners, soft hyphens, bidi marks) removed, extra-network
tags (``<lora:…>``, ``<hypernet:…>``) and permutation braces dropped, and the emphasis syntax parsed
exactly as the encoder parses it (:func:`gen_core.prompts.parse_prompt_attention`), so ``nu()de``,
``nu[]de`` and ``(nu()de:1.5)`` all read ``nude`` — as they tokenize.  Runs of different weight are
tokenized separately by the encoder, so they are joined with a space; ``BREAK`` becomes a space.

Entries match whole words with their common word forms (``nude`` also matches ``nudes``,
``nudity``; a phrase's words may be separated by any punctuation), so ``therapist``,
``Scunthorpe`` or ``cocktail`` never trip ``rapist``, ``cunt`` or ``cock``.  Admin regexes
(``re:<pattern>``) run on Google's RE2, whose matching time is linear in the text: no pattern can
stall the bot.  Patterns RE2 cannot compile (backreferences, lookarounds) are reported by
:func:`compile_entries` so that they can be disabled and listed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import re2

from gen_core.prompts import BREAK, PromptError, parse_prompt_attention, strip_extra_networks

REGEX_PREFIX = "re:"
MAX_PATTERN_CHARS = 500
_PATTERN_MEMORY = 1 << 20  # bytes RE2 may use for one compiled pattern
_WORD = r"[\pL\pN_]"
_NOT_WORD = r"[^\pL\pN_]"
_FORMAT = "Cf"  # Unicode category of zero-width and other invisible formatting characters


class PatternError(ValueError):
    """An admin pattern RE2 cannot run; the message says why."""


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = _PATTERN_MEMORY
    return options


def _visible(text: str) -> str:
    """NFKC without invisible format characters."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != _FORMAT)


# Letters that look like Latin ones (after NFKC), by case: a capital maps by its own shape (Greek Ν is N,
# its small ν is v).  Cyrillic, Greek and Armenian look-alikes, and Latin letters NFKC keeps (dotless ı, ɑ, ɡ).
_LOOKALIKES = str.maketrans({
    **dict(zip("аеёорсухѕіїјһԁԛԝкӏ", "aeeopcyxsiijhdqwkl", strict=True)),
    **dict(zip("АВЕЁКМНОРСТУХЅІЇЈҺԀԚԜӀ", "abeekmhopctyxsiijhdqwl", strict=True)),
    **dict(zip("αορυνικχετγημϲϳω", "aopuvikxetynucjw", strict=True)),
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹͿ", "abezhikmnoptyxcj", strict=True)),
    **dict(zip("սօհոցզՍՕ", "uohngquo", strict=True)),
    **dict(zip("ıɑɡɩʋ", "iagiv", strict=True)),
})  # fmt: skip
_LETTERS = re.compile(r"[^\W\d_]+")


def _script(ch: str) -> str:
    return unicodedata.name(ch, "?").split(" ", 1)[0]  # LATIN, CYRILLIC, GREEK, ARMENIAN, CJK, …


def _spelled_in_latin(word: str) -> str:
    """``word`` with its look-alikes as the Latin letters they imitate — unless it is written wholly in one
    other script: ``nudе`` (a Cyrillic е) and ``nսde`` (an Armenian ս) read ``nude``, Russian or Greek stays."""
    if word.isascii() or (mapped := word.translate(_LOOKALIKES)) == word:
        return word
    scripts = {_script(ch) for ch in word}
    return word if len(scripts) == 1 and "LATIN" not in scripts else mapped


def fold(text: str) -> str:
    """NFKC, Latin look-alikes in mixed words spelled in Latin, case folding and no invisible format
    characters: the form every comparison uses (never shown: it is only matched)."""
    text = _visible(text)
    if not text.isascii():
        text = _LETTERS.sub(lambda m: _spelled_in_latin(m.group()), text)
    return unicodedata.normalize("NFKC", text.casefold())


def model_text(prompt: str) -> str:
    """The words of ``prompt`` as the text encoder will see them (see the module docstring)."""
    text = _visible(prompt)
    try:
        text, _ = strip_extra_networks(text)
    except PromptError:  # a tag with a broken weight is refused elsewhere; here it is just text
        pass
    text = text.replace("{", "").replace("}", "")
    runs = " ".join(" " if run == BREAK else run[0] for run in parse_prompt_attention(text))
    return " ".join(fold(runs).split())


def _word_forms(word: str) -> str:
    """A regex for ``word`` and its plural and verb forms (and ``nude`` → ``nudity``)."""
    w = re2.escape(word)
    if word.endswith("y") and len(word) > 2:
        return f"(?:{w}|{re2.escape(word[:-1])}ies)"
    if word.endswith("e"):
        stem = re2.escape(word[:-1])
        return f"(?:{stem}(?:e|es|e's|ed|ing|ity|ities))"
    return f"(?:{w}(?:s|es|'s|ed|ing)?)"


def term_pattern(term: str) -> str:
    """A whole-word RE2 pattern for a word or phrase (any punctuation between a phrase's words)."""
    words = fold(term).split()
    if not words:
        raise PatternError("empty term")
    body = f"{_NOT_WORD}+".join([*(re2.escape(w) for w in words[:-1]), _word_forms(words[-1])])
    return f"(?:^|{_NOT_WORD}){body}(?:$|{_NOT_WORD})"


def compile_pattern(pattern: str) -> re2._Regexp:
    """An admin regex compiled by RE2 (case-insensitive), or :class:`PatternError` saying why not."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"patterns are at most {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(f"{reason} (backreferences and lookarounds are not supported)") from None


def compile_entry(entry: str) -> re2._Regexp:
    """A stored entry (``re:<pattern>``, or a word or phrase) compiled; :class:`PatternError` if it can't be."""
    if entry.startswith(REGEX_PREFIX):
        return compile_pattern(entry[len(REGEX_PREFIX):])
    return re2.compile(term_pattern(entry), _options())


@dataclass(frozen=True)
class WordFilter:
    """Compiled entries; ``disabled`` holds the stored ones RE2 cannot run, with the reason."""

    entries: tuple[tuple[str, re2._Regexp], ...]
    disabled: tuple[tuple[str, str], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The entries that are checked."""
        return tuple(entry for entry, _ in self.entries)

    def first_match(self, prompt: str) -> str | None:
        """The first entry found in the text the model will see for ``prompt``, or None."""
        if not self.entries:
            return None
        text = model_text(prompt)
        return next((entry for entry, pattern in self.entries if pattern.search(text)), None)


@functools.lru_cache(maxsize=256)
def compile_entries(entries: tuple[str, ...]) -> WordFilter:
    """A :class:`WordFilter` for these entries (cached: the same list compiles once)."""
    ok, disabled = [], []
    for entry in entries:
        try:
            ok.append((entry, compile_entry(entry)))
        except PatternError as exc:
            disabled.append((entry, str(exc)))
    return WordFilter(tuple(ok), tuple(disabled))


def shown(entry: str) -> str:
    """How an entry is shown to members and admins (a regex without its prefix)."""
    return entry[len(REGEX_PREFIX):] if entry.startswith(REGEX_PREFIX) else entry

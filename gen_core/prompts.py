"""Prompt parsing and CLIP text encoding the way NovelAI and AUTOMATIC1111 webui users write prompts.

Syntax (AUTOMATIC1111 webui semantics, see :func:`parse_prompt_attention`):

* ``(words)`` multiplies the attention of ``words`` by 1.1, ``[words]`` divides it by 1.1,
  ``(words:1.3)`` sets an explicit multiplier; brackets nest and multiply.
* ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal characters.
* Brackets left open at the end of the prompt are closed there.
* ``BREAK`` (upper case, a separate word) ends the current 75-token chunk.

Long prompts are split into chunks of 75 tokens; each chunk is wrapped in BOS/EOS and padded to
CLIP's 77 positions, encoded separately and the results are concatenated along the sequence axis
(3 chunks = 231 positions, which covers NovelAI's 225-token prompts).  When a chunk fills up in
the middle of a tag, the tokens after the chunk's last comma (if it is among the last 20 tokens)
move to the next chunk, so a tag is not cut in half (if that padding alone would push the prompt
past the chunk limit, the chunks are filled completely instead).  Emphasis multiplies the encoder
output of each token, after which the chunk's original mean is restored (per chunk; the webui
takes the mean over the i-th chunks of all prompts it encodes together, which is the same when it
encodes a single prompt).

Textual-inversion embeddings (A1111): a prompt names one by writing its exact name as a whole word
(not part of a longer word); its vectors take the place of the name's tokens, count as that many
tokens, carry the emphasis of the text around them and are never split across two chunks.  Which
embeddings a call may use is given per call (``embeddings``: name → vectors); nothing is added to the
tokenizer or the text encoder, which are exactly as before afterwards.

Prompts longer than the chunk limit raise :class:`PromptTooLong`; nothing is silently truncated.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "BREAK",
    "CHUNK_TOKENS",
    "EmbeddingSlots",
    "Chunk",
    "ExtraNetwork",
    "PromptEncoder",
    "PromptError",
    "PromptTooLong",
    "SDXLPromptEncoder",
    "count_tokens",
    "parse_prompt_attention",
    "strip_extra_networks",
]

#: Prompt tokens per chunk (CLIP's 77 positions minus BOS and EOS).
CHUNK_TOKENS = 75
#: Marker weight of a ``("BREAK", -1.0)`` entry in :func:`parse_prompt_attention`'s result.
BREAK = ("BREAK", -1.0)

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
#: How far back (in tokens) a full chunk looks for a comma to break at (A1111's default of 20).
COMMA_BACKTRACK = 20


class PromptError(ValueError):
    """A prompt that cannot be used as written; the message is meant for the user."""


class PromptTooLong(PromptError):
    """The prompt needs more chunks than allowed.  ``token_count`` and ``limit`` are in tokens."""

    def __init__(self, message: str, token_count: int, limit: int):
        super().__init__(message)
        self.token_count = token_count
        self.limit = limit


# --------------------------------------------------------------------------------------------
# Attention syntax
# --------------------------------------------------------------------------------------------

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
# One lexical item per match; the alternatives are tried in order.
_ATTENTION_TOKEN = re.compile(
    rf"""
    (?P<escaped>\\[()\[\]\\])            # \( \) \[ \] \\  -> the literal character
  | (?P<weight_close>:\s*(?P<weight>{_NUMBER})\s*\))  # ":1.3)" closes a round bracket with a weight
  | (?P<open_round>\()
  | (?P<open_square>\[)
  | (?P<close_round>\))
  | (?P<close_square>\])
  | (?P<text>[^\\()\[\]:]+|[\\:])        # plain text; a lone backslash or colon is text too
    """,
    re.VERBOSE,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(text, weight)`` runs using the AUTOMATIC1111 webui emphasis syntax.

    Runs of equal weight are merged, ``BREAK`` becomes the marker ``("BREAK", -1.0)`` and an empty
    prompt gives ``[("", 1.0)]``.  Unmatched closing brackets are literal text; brackets still open
    at the end of the prompt are closed there.  Multipliers compose by multiplication, innermost
    bracket first.  Unlike the webui (where a ``BREAK`` inside brackets gets multiplied and stops
    being a break), ``BREAK`` keeps its marker weight wherever it appears.

    >>> parse_prompt_attention('normal text')
    [('normal text', 1.0)]
    >>> parse_prompt_attention('an (important) word')
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    >>> parse_prompt_attention('(unbalanced')
    [('unbalanced', 1.1)]
    >>> parse_prompt_attention('\\\\(literal\\\\]')
    [('(literal]', 1.0)]
    >>> parse_prompt_attention('(unnecessary)(parens)')
    [('unnecessaryparens', 1.1)]
    >>> parse_prompt_attention('a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).')  # doctest: +NORMALIZE_WHITESPACE
    [('a ', 1.0), ('house', 1.5730000000000004), (' ', 1.1), ('on', 1.0), (' a ', 1.1), ('hill', 0.55),
     (', sun, ', 1.1), ('sky', 1.4641000000000006), ('.', 1.1)]
    >>> parse_prompt_attention('a BREAK b')
    [('a', 1.0), ('BREAK', -1.0), ('b', 1.0)]
    """
    # Each run is [text, is_break].  A bracket that closes multiplies the weights of the runs since it
    # opened; those multiplications are recorded and applied afterwards in the same order, each as one
    # vectorised step (the same float arithmetic as one run at a time, without the quadratic Python
    # loop that 3,000 open brackets would cost).
    runs: list[tuple[str, bool]] = []
    scalings: list[tuple[int, int, float]] = []  # (first run, end, factor) in the order they apply
    open_round: list[int] = []  # index into runs where each open bracket started
    open_square: list[int] = []

    def add_text(chunk: str) -> None:
        parts = _BREAK_SPLIT.split(chunk)
        for i, part in enumerate(parts):
            if i:
                runs.append((BREAK[0], True))
            if part:
                runs.append((part, False))

    for match in _ATTENTION_TOKEN.finditer(text):
        kind = match.lastgroup
        token = match.group(0)
        if kind == "escaped":
            runs.append((token[1], False))
        elif kind == "open_round":
            open_round.append(len(runs))
        elif kind == "open_square":
            open_square.append(len(runs))
        elif kind == "weight_close" and open_round:
            scalings.append((open_round.pop(), len(runs), float(match.group("weight"))))
        elif kind == "close_round" and open_round:
            scalings.append((open_round.pop(), len(runs), ROUND_MULTIPLIER))
        elif kind == "close_square" and open_square:
            scalings.append((open_square.pop(), len(runs), SQUARE_MULTIPLIER))
        else:  # plain text, or a closing bracket with nothing to close
            add_text(token)

    scalings += [(start, len(runs), ROUND_MULTIPLIER) for start in open_round]
    scalings += [(start, len(runs), SQUARE_MULTIPLIER) for start in open_square]
    weights = np.ones(len(runs))
    for i, (start, end, factor) in enumerate(scalings):
        weights[start:end] *= factor
        if i % 32 == 31:  # thousands of [ brackets: weights below 1e-100 are 0 (subnormal floats are slow)
            weights[np.abs(weights) < 1e-100] = 0.0

    merged: list[tuple[str, float]] = []
    for (run_text, is_break), weight in zip(runs, weights.tolist(), strict=True):
        if merged and not is_break and merged[-1] != BREAK and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + run_text, weight)
        else:
            merged.append(BREAK if is_break else (run_text, weight))
    return merged or [("", 1.0)]


# --------------------------------------------------------------------------------------------
# Extra-network tags (<lora:name:0.8>, <hypernet:name>)
# --------------------------------------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(?P<kind>[A-Za-z_][\w-]*):(?P<name>[^:<>]+?)(?::(?P<args>[^<>]*))?>")


class ExtraNetwork(NamedTuple):
    """One ``<kind:name:args>`` tag of a prompt: ``weights`` are its positional numbers in order, ``named``
    its ``key=number`` arguments (A1111's ``<lora:name:te=0.5:unet=1>``)."""

    kind: str
    name: str
    weights: tuple[float, ...] = ()
    named: tuple[tuple[str, float], ...] = ()

    @property
    def weight(self) -> float:
        """The first weight (1 when the tag has none)."""
        return self.weights[0] if self.weights else 1.0


def _tag_number(tag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PromptError(f"`{tag}`: the weight must be a number, like <lora:name:0.8>.") from None
    if not math.isfinite(value):
        raise PromptError(f"`{tag}`: the weight must be a finite number.")
    return value


def strip_extra_networks(text: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove ``<kind:name>`` / ``<kind:name:w1:w2…>`` / ``<kind:name:key=w>`` tags from a prompt.

    Returns the prompt without the tags (whitespace around removed tags collapsed, ends stripped)
    and the tags as :class:`ExtraNetwork` in order of appearance.  A weight that is not a finite
    number raises :class:`PromptError`.

    >>> strip_extra_networks("a cat <hypernet:anime:0.8> sitting <lora:detail:0.5:unet=1>")
    ('a cat sitting', [ExtraNetwork(kind='hypernet', name='anime', weights=(0.8,), named=()), \
ExtraNetwork(kind='lora', name='detail', weights=(0.5,), named=(('unet', 1.0),))])
    """
    found: list[ExtraNetwork] = []

    def take(match: re.Match) -> str:
        tag = match.group(0)
        weights: list[float] = []
        named: list[tuple[str, float]] = []
        args = match.group("args")
        for arg in args.split(":") if args is not None else ():
            key, eq, value = arg.partition("=")
            if eq:
                named.append((key.strip(), _tag_number(tag, value.strip())))
            else:
                weights.append(_tag_number(tag, arg.strip()))
        found.append(ExtraNetwork(match.group("kind"), match.group("name").strip(), tuple(weights), tuple(named)))
        return " "

    stripped = _EXTRA_NETWORK.sub(take, text)
    if found:
        stripped = re.sub(r"[ \t]{2,}", " ", stripped).strip()
    return stripped, found


# --------------------------------------------------------------------------------------------
# Tokenising into chunks
# --------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One 77-position CLIP input: BOS, up to 75 prompt tokens, EOS, padding."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)

    def key(self) -> tuple:
        return (tuple(self.tokens), tuple(self.multipliers))


class EmbeddingSlots:
    """The textual-inversion embeddings one call may use: their names (matched as exact whole words)
    and where their vectors lie in the call's table.  Until it is encoded, vector ``i`` of the table
    stands in a prompt's tokens as the id ``-1 - i`` (real token ids are never negative)."""

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self.slots: dict[str, tuple[int, int]] = {}  # name -> (first row, vector count)
        start = 0
        for name in sorted(sizes):
            self.slots[name] = (start, int(sizes[name]))
            start += int(sizes[name])
        longest_first = sorted(self.slots, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, longest_first)) + r")(?![\w-])") if self.slots else None
        )

    def split(self, text: str) -> list[str | list[int]]:
        """``text`` as plain pieces and the placeholder ids of each embedding it names."""
        if self._pattern is None:
            return [text]
        out: list[str | list[int]] = []
        for i, piece in enumerate(self._pattern.split(text)):
            if i % 2:
                start, count = self.slots[piece]
                out.append([-1 - row for row in range(start, start + count)])
            elif piece:
                out.append(piece)
        return out

    def named(self, text: str) -> list[str]:
        """The names ``text`` uses, in order of appearance (repeats included)."""
        return self._pattern.findall(text) if self._pattern is not None else []

    def table(self, vectors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The vectors of every slot, row ``i`` for id ``-1 - i``."""
        return torch.cat([vectors[name] for name in self.slots])


def _slots(embeddings: Mapping[str, torch.Tensor] | None) -> EmbeddingSlots | None:
    return EmbeddingSlots({name: v.shape[0] for name, v in embeddings.items()}) if embeddings else None


def _tokenize_runs(text: str, tokenizer, slots: EmbeddingSlots | None = None) -> list[tuple[list[int] | None, float]]:
    """Parse ``text`` and tokenize every run (no BOS/EOS); ``None`` tokens mark a BREAK."""
    return _tokenize_parsed(parse_prompt_attention(text), tokenizer, slots)


def _tokenize_parsed(
    runs: list[tuple[str, float]], tokenizer, slots: EmbeddingSlots | None = None
) -> list[tuple[list[int] | None, float]]:
    """Tokenized runs; an embedding a run names becomes a run of its own with its placeholder ids."""
    pieces: list[tuple[list[str | list[int]] | None, float]] = [
        (None, BREAK[1]) if run == BREAK else (slots.split(run[0]) if slots else [run[0]], run[1]) for run in runs
    ]
    texts = [p for parts, _ in pieces if parts is not None for p in parts if isinstance(p, str)]
    # verbose=False: long runs are expected here, silence the "longer than 77" warning.
    ids = (
        tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if texts
        else []
    )
    out: list[tuple[list[int] | None, float]] = []
    it = iter(ids)
    for parts, weight in pieces:
        if parts is None:
            out.append((None, weight))
            continue
        for part in parts:
            out.append((list(next(it)) if isinstance(part, str) else part, weight))
    return out


def count_tokens(text: str, tokenizer, limit: int | None = None, embeddings: Mapping[str, int] | None = None) -> int:
    """Number of CLIP tokens the prompt uses, without BOS/EOS/padding; ``BREAK`` is not counted.

    Emphasis brackets and weights are syntax and do not count either; an embedding named in the
    prompt (``embeddings``: name → vector count) counts its vectors.  With ``limit``, a prompt
    with more non-blank runs than ``limit`` (each is at least one token) is not tokenized at all:
    the result is then that number of runs, a lower bound above ``limit``.
    """
    runs = parse_prompt_attention(text)
    if limit is not None:
        words = sum(1 for run in runs if run != BREAK and run[0].strip())
        if words > limit:
            return words
    slots = EmbeddingSlots(embeddings) if embeddings else None
    return sum(len(tokens) for tokens, _ in _tokenize_parsed(runs, tokenizer, slots) if tokens is not None)


def _split_into_chunks(
    runs: list[tuple[list[int] | None, float]],
    comma_id: int | None,
    backtrack: int,
) -> list[tuple[list[int], list[float]]]:
    """Distribute tokens over chunks of at most CHUNK_TOKENS (without BOS/EOS/padding)."""
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    mults: list[float] = []
    last_comma = -1  # index in `tokens` of the current chunk's last comma

    def close() -> None:
        nonlocal tokens, mults, last_comma
        chunks.append((tokens, mults))
        tokens, mults, last_comma = [], [], -1

    for run_tokens, weight in runs:
        if run_tokens is None:  # BREAK always ends the current chunk
            close()
            continue
        if run_tokens and run_tokens[0] < 0 and tokens and len(tokens) + len(run_tokens) > CHUNK_TOKENS:
            close()  # an embedding's vectors stay together in the next chunk
        for token in run_tokens:
            if len(tokens) == CHUNK_TOKENS:
                # Full: if the tag being written started after a recent comma, move it whole to the
                # next chunk.  A comma arriving now needs nothing moved: the chunk ends at a tag boundary.
                if token != comma_id and last_comma >= 0 and CHUNK_TOKENS - last_comma <= backtrack:
                    moved = (tokens[last_comma + 1 :], mults[last_comma + 1 :])
                    del tokens[last_comma + 1 :], mults[last_comma + 1 :]
                    close()
                    tokens, mults = moved
                else:
                    close()
            if token == comma_id:
                last_comma = len(tokens)
            tokens.append(token)
            mults.append(weight)
    if tokens or not chunks:
        close()
    return chunks


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def final_layer_norm(text_encoder) -> torch.nn.Module:
    for owner in (text_encoder, getattr(text_encoder, "text_model", None)):
        norm = getattr(owner, "final_layer_norm", None)
        if norm is not None:
            return norm
    raise TypeError(f"{type(text_encoder).__name__} has no final_layer_norm; is it a CLIP text model?")


class PromptEncoder:
    """Turns prompts into CLIP conditioning tensors with emphasis, chunking and CLIP skip.

    ``clip_skip``: 1 uses the last hidden state (HF's ``last_hidden_state``, already through the final
    layer norm); ``n`` >= 2 uses ``hidden_states[-n]`` followed by the text model's final layer norm
    (NovelAI uses 2, the default here).

    With ``final_norm=False`` (SDXL's convention) ``hidden_states[-n]`` is used as it is, for every
    ``n`` including 1: SDXL conditions on the raw penultimate layer (``n = 2``).

    ``max_chunks`` (default 3, i.e. 225 tokens) limits the prompt length; ``None`` means no limit.
    ``comma_backtrack`` is how many tokens back a full chunk looks for a comma (0 disables it).

    The encoding of the empty chunk is cached per (clip_skip, device, dtype); call
    :meth:`clear_cache` after changing the text encoder's weights (e.g. loading a LoRA into it).
    """

    def __init__(
        self,
        tokenizer,
        text_encoder,
        clip_skip: int = 2,
        max_chunks: int | None = 3,
        *,
        comma_backtrack: int = COMMA_BACKTRACK,
        final_norm: bool = True,
    ):
        if max_chunks is not None and max_chunks < 1:
            raise ValueError("max_chunks must be at least 1 (or None for no limit)")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.clip_skip = self._check_clip_skip(clip_skip)
        self.max_chunks = max_chunks
        self.comma_backtrack = comma_backtrack
        self.bos_id: int = tokenizer.bos_token_id
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        comma = tokenizer.convert_tokens_to_ids(",</w>")
        self.comma_id: int | None = (
            comma if isinstance(comma, int) and comma != tokenizer.unk_token_id else None
        )
        self._final_norm = final_layer_norm(text_encoder) if final_norm else None
        self._empty_cache: dict[tuple, torch.Tensor] = {}

    # -- configuration ---------------------------------------------------------------------

    def _check_clip_skip(self, clip_skip: int) -> int:
        layers = getattr(getattr(self.text_encoder, "config", None), "num_hidden_layers", None)
        if not isinstance(clip_skip, int) or clip_skip < 1 or (layers is not None and clip_skip > layers):
            upper = f"..{layers}" if layers is not None else "+"
            raise ValueError(f"clip_skip must be an integer in 1{upper}, got {clip_skip!r}")
        return clip_skip

    @property
    def max_clip_skip(self) -> int:
        return self.text_encoder.config.num_hidden_layers

    @property
    def token_limit(self) -> int | None:
        return None if self.max_chunks is None else self.max_chunks * CHUNK_TOKENS

    def clear_cache(self) -> None:
        """Forget the cached empty-chunk encodings (needed after the text encoder's weights change)."""
        self._empty_cache.clear()

    # -- tokenising ------------------------------------------------------------------------

    def _finish(self, tokens: list[int], mults: list[float]) -> Chunk:
        pad = CHUNK_TOKENS - len(tokens)
        return Chunk(
            tokens=[self.bos_id, *tokens, self.eos_id] + [self.pad_id] * pad,
            multipliers=[1.0, *mults, 1.0] + [1.0] * pad,
        )

    def empty_chunk(self) -> Chunk:
        return self._finish([], [])

    def tokenize(self, text: str, embeddings: Mapping[str, torch.Tensor] | None = None) -> list[Chunk]:
        """Split a prompt into 77-position chunks; raises :class:`PromptTooLong` past ``max_chunks``.
        The vectors of ``embeddings`` (name → ``[n, width]``) the prompt names stand as placeholder ids
        (see :class:`EmbeddingSlots`)."""
        runs = _tokenize_runs(text, self.tokenizer, _slots(embeddings))
        token_count = sum(len(t) for t, _ in runs if t is not None)
        parts = _split_into_chunks(runs, self.comma_id, self.comma_backtrack)
        if self.max_chunks is not None and len(parts) > self.max_chunks and self.comma_backtrack:
            # Moving tags whole costs padding; if that is what pushes the prompt over the limit,
            # fill the chunks completely instead of rejecting a prompt that fits.
            parts = _split_into_chunks(runs, self.comma_id, 0)
        if self.max_chunks is not None and len(parts) > self.max_chunks:
            raise self._too_long(token_count, len(parts))
        return [self._finish(tokens, mults) for tokens, mults in parts]

    def _too_long(self, token_count: int, chunks_needed: int) -> PromptTooLong:
        limit = self.token_limit
        assert limit is not None and self.max_chunks is not None
        what = f"{self.max_chunks} chunk{'s' if self.max_chunks != 1 else ''} of {CHUNK_TOKENS}"
        if token_count > limit:
            message = f"Prompt is {token_count} tokens; the limit is {limit} ({what}). Shorten it."
        else:
            message = (
                f"Prompt is {token_count} tokens but its BREAKs split it into {chunks_needed} chunks; "
                f"the limit is {limit} tokens ({what}). Remove a BREAK or shorten it."
            )
        return PromptTooLong(message, token_count=token_count, limit=limit)

    # -- encoding --------------------------------------------------------------------------

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        try:
            param = next(self.text_encoder.parameters())
            # Offloaded weights may sit on "meta"; the offload hooks move CPU inputs where needed.
            return (torch.device("cpu") if param.device.type == "meta" else param.device), param.dtype
        except (AttributeError, StopIteration):
            return torch.device(getattr(self.text_encoder, "device", "cpu")), getattr(
                self.text_encoder, "dtype", torch.float32
            )

    @contextlib.contextmanager
    def input_ids(self, chunks: Sequence[Chunk], embeddings: Mapping[str, torch.Tensor] | None = None) -> Iterator[torch.Tensor]:
        """The token ids of ``chunks`` for the text encoder, ``[len(chunks), 77]``; while in the block, the
        encoder's token embedding layer returns the embeddings' vectors at their placeholders (a
        forward hook, removed on exit: the encoder is exactly as before)."""
        device, _ = self._device_dtype()
        ids = torch.tensor([c.tokens for c in chunks], dtype=torch.long, device=device)
        slots = ids < 0
        if not bool(slots.any()):
            yield ids
            return
        if not embeddings:
            raise ValueError("the prompt holds embedding placeholders but no embeddings were given")
        rows = _slots(embeddings).table(embeddings).to(device)[-1 - ids[slots]]

        def with_vectors(module, args, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[slots] = rows.to(output.dtype)
            return output

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(with_vectors)
        try:
            yield ids.masked_fill(slots, self.bos_id)  # any id but the end token's: pooling looks for it
        finally:
            handle.remove()

    def _run_encoder(
        self, chunks: Sequence[Chunk], clip_skip: int, embeddings: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Encode chunks as one batch; returns [len(chunks), 77, dim] with emphasis applied."""
        with self.input_ids(chunks, embeddings) as ids:
            if clip_skip == 1 and self._final_norm is not None:
                z = self.text_encoder(input_ids=ids).last_hidden_state
            else:
                z = self.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-clip_skip]
                if self._final_norm is not None:
                    z = self._final_norm(z)

        mults = torch.tensor([c.multipliers for c in chunks], dtype=torch.float32, device=z.device)
        weighted = (mults != 1.0).any(dim=1)
        if bool(weighted.any()):
            # A1111's "Original" emphasis, per chunk: scale each token's vector, then restore the mean.
            zw = z[weighted].float()
            original_mean = zw.mean(dim=(1, 2), keepdim=True)
            zw = zw * mults[weighted].unsqueeze(-1)
            new_mean = zw.mean(dim=(1, 2), keepdim=True)
            # A mean of ~0 (e.g. every token weighted 0) cannot be restored; leave that chunk scaled.
            safe = new_mean.abs() > 1e-12
            zw = torch.where(safe, zw * (original_mean / torch.where(safe, new_mean, 1.0)), zw)
            z = z.clone()
            z[weighted] = zw.to(z.dtype)
        return z

    def _encode_chunks(
        self,
        per_text: list[list[Chunk]],
        clip_skip: int,
        min_chunks: int,
        embeddings: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Encode several texts' chunks in one forward pass, padding each to the same chunk count."""
        n = max(min_chunks, max(len(c) for c in per_text))
        device, dtype = self._device_dtype()
        cache_key = (clip_skip, device, dtype)
        empty_key = self.empty_chunk().key()

        unique: dict[tuple, int] = {}
        to_run: list[Chunk] = []
        for chunks in per_text:
            for chunk in chunks:
                key = chunk.key()
                if key == empty_key and cache_key in self._empty_cache:
                    continue
                if key not in unique:
                    unique[key] = len(to_run)
                    to_run.append(chunk)

        with torch.no_grad():
            encoded = self._run_encoder(to_run, clip_skip, embeddings) if to_run else None
            if cache_key not in self._empty_cache:
                if empty_key in unique:
                    assert encoded is not None
                    self._empty_cache[cache_key] = encoded[unique[empty_key]].clone()
                else:
                    self._empty_cache[cache_key] = self._run_encoder([self.empty_chunk()], clip_skip)[0]
            empty = self._empty_cache[cache_key]

            rows = []
            for chunks in per_text:
                parts = []
                for chunk in chunks:
                    key = chunk.key()
                    if key in unique:
                        assert encoded is not None
                        parts.append(encoded[unique[key]])
                    else:  # the empty chunk, served from the cache
                        parts.append(empty)
                parts.extend([empty] * (n - len(chunks)))
                rows.append(torch.cat(parts, dim=0))
            return torch.stack(rows, dim=0)

    def encode(
        self,
        text: str,
        clip_skip: int | None = None,
        min_chunks: int = 1,
        embeddings: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Encode one prompt to ``[1, 77 * n, dim]`` (n = its chunk count, at least ``min_chunks``)."""
        skip = self.clip_skip if clip_skip is None else self._check_clip_skip(clip_skip)
        return self._encode_chunks([self.tokenize(text, embeddings)], skip, min_chunks, embeddings)

    def encode_many(
        self, texts: list[str], clip_skip: int | None = None, embeddings: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Encode prompts to ``[len(texts), 77 * max_n, dim]``; shorter ones are padded with empty chunks.
        ``embeddings`` (name → ``[n, width]`` vectors) are the textual inversions the texts may name."""
        if isinstance(texts, str):
            raise TypeError("encode_many takes a list of prompts; use encode() for one")
        if not texts:
            raise ValueError("encode_many needs at least one prompt")
        skip = self.clip_skip if clip_skip is None else self._check_clip_skip(clip_skip)
        return self._encode_chunks([self.tokenize(t, embeddings) for t in texts], skip, 1, embeddings)

    def encode_pair(
        self,
        prompt: str,
        negative: str,
        clip_skip: int | None = None,
        embeddings: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompt and negative prompt to ``(cond, uncond)``, each ``[1, 77 * n, dim]``, same n."""
        both = self.encode_many([prompt, negative], clip_skip=clip_skip, embeddings=embeddings)
        return both[0:1], both[1:2]


class SDXLPromptEncoder:
    """SDXL's conditioning with the same prompt rules as :class:`PromptEncoder`, for both encoders.

    Each of SDXL's text encoders (CLIP ViT-L and OpenCLIP bigG) gets the prompt through its own
    :class:`PromptEncoder` (emphasis with mean restore per encoder, BREAK, 75-token chunks with comma
    backtrack, ``max_chunks``): both tokenizers share CLIP's vocabulary, so the chunks are the same
    and only the padding token differs (end token for ViT-L, ``!`` for bigG, as in SDXL).  Per chunk
    the two encoders' ``hidden_states[-clip_skip]`` (no final layer norm; 2 = SDXL's penultimate
    layer) are concatenated along the feature axis.  The pooled embedding is the second encoder's
    projected end token of the prompt's first chunk (as A1111 takes it); emphasis does not touch it.

    The interface is the one the engine uses of :class:`PromptEncoder`, plus :meth:`pooled_many`;
    ``embeddings`` map a name to one tensor per text encoder (an SDXL embedding's ``clip_l`` and
    ``clip_g``), each part encoding with its own.
    """

    def __init__(self, tokenizers, text_encoders, clip_skip: int = 2, max_chunks: int | None = 3):
        self.parts = [
            PromptEncoder(tok, enc, clip_skip=clip_skip, max_chunks=max_chunks, final_norm=False)
            for tok, enc in zip(tokenizers, text_encoders, strict=True)
        ]
        self.max_chunks = max_chunks

    @property
    def clip_skip(self) -> int:
        return self.parts[0].clip_skip

    @property
    def max_clip_skip(self) -> int:
        return min(part.max_clip_skip for part in self.parts)

    @property
    def token_limit(self) -> int | None:
        return self.parts[0].token_limit

    def clear_cache(self) -> None:
        for part in self.parts:
            part.clear_cache()

    def _of(self, embeddings: Mapping[str, Sequence[torch.Tensor]] | None, i: int) -> dict[str, torch.Tensor] | None:
        """The vectors of the ``i``-th text encoder from ``embeddings`` (name → one tensor per encoder)."""
        return {name: vectors[i] for name, vectors in embeddings.items()} if embeddings else None

    def tokenize(self, text: str, embeddings: Mapping[str, Sequence[torch.Tensor]] | None = None) -> list[Chunk]:
        return self.parts[0].tokenize(text, self._of(embeddings, 0))

    def encode(
        self,
        text: str,
        clip_skip: int | None = None,
        min_chunks: int = 1,
        embeddings: Mapping[str, Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        return torch.cat(
            [p.encode(text, clip_skip, min_chunks, self._of(embeddings, i)) for i, p in enumerate(self.parts)], dim=-1
        )

    def encode_many(
        self,
        texts: list[str],
        clip_skip: int | None = None,
        embeddings: Mapping[str, Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        return torch.cat(
            [p.encode_many(texts, clip_skip, self._of(embeddings, i)) for i, p in enumerate(self.parts)], dim=-1
        )

    def encode_pair(
        self,
        prompt: str,
        negative: str,
        clip_skip: int | None = None,
        embeddings: Mapping[str, Sequence[torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        both = self.encode_many([prompt, negative], clip_skip=clip_skip, embeddings=embeddings)
        return both[0:1], both[1:2]

    def pooled_many(
        self, texts: list[str], embeddings: Mapping[str, Sequence[torch.Tensor]] | None = None
    ) -> torch.Tensor:
        """``[len(texts), projection_dim]``: the second encoder's pooled output of each first chunk."""
        second, vectors = self.parts[-1], self._of(embeddings, len(self.parts) - 1)
        chunks = [second.tokenize(t, vectors)[0] for t in texts]
        with torch.no_grad(), second.input_ids(chunks, vectors) as ids:
            return second.text_encoder(input_ids=ids).text_embeds

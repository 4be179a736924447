"""Prompt encoding cost: a 225-token prompt with emphasis (3 chunks) vs a 75-token one (1 chunk).

Runs on the tiny offline model (real CLIP tokenizer, 3-layer text encoder), so it measures the
tokenizer/chunking/emphasis overhead plus a small encoder; with a real 12-layer CLIP the encoder
dominates.  Runs are interleaved (75, 225, 75, 225, ...) and medians reported.

    python -m bench.prompt_encoding [--runs N] [--model-dir DIR]

``run(...)`` returns a dict for a bench runner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from bench.common import interleaved, medians, tiny_model_dir
from gen_core.prompts import PromptEncoder, count_tokens

_TAGS = [
    "masterpiece",
    "best quality",
    "(1girl:1.2)",
    "solo",
    "long hair",
    "[blush]",
    "looking at viewer",
    "((smile))",
    "open mouth",
    "(blue eyes:1.3)",
    "brown hair",
    "shirt",
    "[[long sleeves]]",
    "(school uniform:1.1)",
    "standing",
    "outdoors",
    "(cherry blossoms:1.25)",
    "sky",
    "day",
    "cloud",
    "tree",
    "(detailed background)",
    "depth of field",
    "[watercolor (medium)]",
    "petals",
    "wind",
]
_FILLER = ["cat", "dog", "bird", "fish", "frog", "red", "blue"]  # one token each


def build_prompt(tokenizer, n_tokens: int, emphasis: bool = True) -> str:
    """A comma-separated tag prompt of exactly ``n_tokens`` CLIP tokens."""
    tags: list[str] = []
    i = 0
    while True:
        tag = _TAGS[i % len(_TAGS)]
        if not emphasis:
            tag = tag.strip("()[]").split(":")[0]
        candidate = ", ".join([*tags, tag])
        if count_tokens(candidate, tokenizer) > n_tokens - 2:
            break
        tags.append(tag)
        i += 1
    prompt = ", ".join(tags)
    j = 0
    while count_tokens(prompt, tokenizer) < n_tokens:
        prompt += " " + _FILLER[j % len(_FILLER)]
        j += 1
    assert count_tokens(prompt, tokenizer) == n_tokens, "filler overshot"
    return prompt


def run(runs: int = 40, model_dir: str | Path | None = None, warmup: int = 3) -> dict[str, Any]:
    from transformers import CLIPTextModel, CLIPTokenizer

    with tiny_model_dir(model_dir, prefix="bench-prompts-") as path:
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder").eval()

    encoder = PromptEncoder(tokenizer, text_encoder)
    short = build_prompt(tokenizer, 75, emphasis=False)
    long = build_prompt(tokenizer, 225, emphasis=True)
    n_short, n_long = len(encoder.tokenize(short)), len(encoder.tokenize(long))

    def chunk_by_chunk() -> torch.Tensor:  # for comparison: one encoder pass per chunk
        with torch.no_grad():
            return torch.cat(
                [encoder._run_encoder([c], encoder.clip_skip) for c in encoder.tokenize(long)], dim=0
            )

    variants = {
        "short": lambda: encoder.encode(short),
        "long": lambda: encoder.encode(long),
        "unbatched": chunk_by_chunk,
        "tokenize": lambda: encoder.tokenize(long),
    }
    med = medians(interleaved(variants, runs, warmup), scale=1000)
    return {
        "bench": "prompt_encoding",
        "model": "tiny (3-layer CLIP text encoder, hidden 32, real CLIP tokenizer)",
        "device": str(next(text_encoder.parameters()).device),
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
        "tokens_short": count_tokens(short, tokenizer),
        "tokens_long": count_tokens(long, tokenizer),
        "chunks_short": n_short,
        "chunks_long": n_long,
        "median_ms_75": round(med["short"], 3),
        "median_ms_225_emphasis": round(med["long"], 3),
        "ratio_225_over_75": round(med["long"] / med["short"], 2),
        "median_ms_225_one_pass_per_chunk": round(med["unbatched"], 3),
        "median_ms_225_tokenize_only": round(med["tokenize"], 3),
        "output_shape_225": list(encoder.encode(long).shape),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--model-dir", default=None, help="existing/created tiny model directory")
    args = parser.parse_args(argv)
    result = run(runs=args.runs, model_dir=args.model_dir)
    print(json.dumps(result, indent=2))
    print(
        f"225-token prompt with emphasis: {result['median_ms_225_emphasis']:.2f} ms, "
        f"75-token prompt: {result['median_ms_75']:.2f} ms, "
        f"ratio {result['ratio_225_over_75']:.2f}x (medians of {result['runs']} interleaved runs)"
    )


if __name__ == "__main__":
    main()

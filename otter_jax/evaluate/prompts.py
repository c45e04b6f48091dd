"""Prompt text per task family and style, and the cleanup of generated answers.

"otter" (default): the training format of otter_jax.data.episodes, `<image>User:{instruction} GPT:<answer>{answer}
<|endofchunk|>` per demonstration and `<image>User:{instruction} GPT:<answer>` for the query.
"openflamingo": OpenFlamingo's evaluation prompts (`<image>Output:{caption}` / `<image>Question:{q} Short answer:{a}`),
for base OpenFlamingo checkpoints.
"""
from __future__ import annotations

import re
from typing import Sequence

from otter_jax.data.episodes import chunk_text, prompt_text
from otter_jax.data.tokenizer import ENDOFCHUNK, MEDIA
from otter_jax.evaluate.choice import LETTERS, options_block
from otter_jax.evaluate.example import Example
from otter_jax.evaluate.vqa_metric import postprocess_vqa_generation

STYLES = ("otter", "openflamingo")
CAPTION_INSTRUCTION = "What does the image describe?"
VQA_SUFFIX = " Please answer in short words."
SCIENCEQA_SUFFIX = "\nAnswer with the option's letter from the given choices directly."


def instruction(family: str, ex: Example, fmt: str = "") -> str:
    if family == "captioning":
        return CAPTION_INSTRUCTION
    if family == "vqa":
        return ex.question + VQA_SUFFIX
    if family == "multichoice":
        hint = ex.meta.get("hint", "")
        if fmt == "scienceqa":
            context = f"Context: {hint}\n" if hint else ""
            return f"{context}Question: {ex.question}\n{options_block(ex.options)}{SCIENCEQA_SUFFIX}"
        return (f"{hint}\n" if hint else "") + f"{ex.question}\n{options_block(ex.options)}"
    return ex.question


def demo_answer(family: str, ex: Example) -> str:
    """The answer a demonstration shows: first reference caption / first human answer / "B. option text"."""
    if family == "multichoice":
        return f"{LETTERS[ex.gold]}. {ex.options[ex.gold]}"
    if not ex.answers:
        raise ValueError(f"example {ex.id!r} has no answer to show as a demonstration")
    return ex.answers[0]


def _of_chunk(family: str, instr: str, answer: str | None) -> str:
    if family == "captioning":
        body = "Output:"
    elif family == "vqa":
        body = f"Question:{instr[:-len(VQA_SUFFIX)] if instr.endswith(VQA_SUFFIX) else instr} Short answer:"
    else:
        body = f"Question:{instr} Answer:"
    return body if answer is None else f"{body}{answer}{ENDOFCHUNK}"


def build(family: str, style: str, query: Example, demos: Sequence[Example], demo_images: bool, fmt: str = ""
          ) -> tuple[str, tuple[str, ...]]:
    """(prompt text, image keys in `<image>` order). Demonstrations come first; with demo_images=False they are
    text-only (no `<image>`, no media: the 0-shot convention)."""
    images: list[str] = []
    context = []
    for d in demos:
        n = len(d.images) if demo_images else 0
        images += list(d.images[:n])
        context.append((instruction(family, d, fmt), demo_answer(family, d), n))
    images += list(query.images)
    q = instruction(family, query, fmt)
    if style == "otter":
        return prompt_text(context, q, len(query.images)), tuple(images)
    if style == "openflamingo":
        text = "".join(MEDIA * n + _of_chunk(family, i, a) for i, a, n in context)
        return text + MEDIA * len(query.images) + _of_chunk(family, q, None), tuple(images)
    raise ValueError(f"unknown prompt style {style!r} (one of {STYLES})")


def clean_answer(family: str, style: str, text: str) -> str:
    text = text.strip()
    if style == "openflamingo":
        if family == "captioning":
            return re.split("Output", text, maxsplit=1)[0].strip()
        if family == "vqa":
            return postprocess_vqa_generation(text)
    return text


__all__ = ["STYLES", "build", "clean_answer", "instruction", "demo_answer", "chunk_text"]

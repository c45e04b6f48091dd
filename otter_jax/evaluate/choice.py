"""Multiple choice: reading the chosen option from a generated answer, and from option log-likelihoods.

Parsing order (ScienceQA's "The answer is X" convention first, then MMBench-style leading letters, then the option
text itself): a letter outside the options or an answer matching several option texts counts as no choice (wrong).
"""
from __future__ import annotations

import re
import string
from typing import Sequence

LETTERS = string.ascii_uppercase
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-Z])\b\)?")
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:[).:,]|\s|$)")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def parse_choice(answer: str, options: Sequence[str]) -> int | None:
    """Index of the option `answer` picks, or None."""
    n = len(options)
    for pattern in (_ANSWER_IS, _LEADING):
        m = pattern.search(answer)
        if m:
            k = LETTERS.index(m.group(1))
            return k if k < n else None
    text = _norm(answer)
    if not text:
        return None
    exact = [i for i, o in enumerate(options) if _norm(o) == text]
    if len(exact) == 1:
        return exact[0]
    contained = [i for i, o in enumerate(options) if _norm(o) and re.search(rf"\b{re.escape(_norm(o))}\b", text)]
    return contained[0] if len(contained) == 1 else None


def rank_choice(logprob_sums: Sequence[float], token_counts: Sequence[int], normalize: str = "mean") -> int:
    """The option with the highest log-likelihood: "sum" of token log-probs, or "mean" per token (lowest answer
    loss, SEED-Bench's rule)."""
    if normalize == "sum":
        scores = list(logprob_sums)
    elif normalize == "mean":
        scores = [s / max(n, 1) for s, n in zip(logprob_sums, token_counts)]
    else:
        raise ValueError(f"unknown likelihood normalisation {normalize!r} (sum, mean)")
    return max(range(len(scores)), key=lambda i: scores[i])


def options_block(options: Sequence[str]) -> str:
    """MMBench layout: "There are several options:\nA. ...\nB. ..."."""
    return "There are several options:\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))

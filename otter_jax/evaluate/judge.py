"""Pairwise LLM judging (MM-Instruct protocol): a judge model behind any OpenAI-compatible endpoint compares our
answer with a baseline answer to the same question, once in each order; the two verdicts combine into win / lose /
tie, which removes the judge's preference for a position.

Requests go through syphus (its SQLite journal makes judging resumable and exactly-once; retries, rate limits).
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
from typing import Sequence

from otter_jax.evaluate.example import Example

SYSTEM = ("You are an impartial judge of answers to questions about an image. Judge helpfulness, correctness, "
          "relevance and detail; ignore answer length and the order in which the answers are shown.")
TEMPLATE = ("Question: {question}\n\n[Answer A]\n{a}\n[End of Answer A]\n\n[Answer B]\n{b}\n[End of Answer B]\n\n"
            "Which answer is better? Reply with exactly one of: [[A]], [[B]] or [[tie]].")
_VERDICT = re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.I)
_LOOSE = re.compile(r"\b(A|B|tie)\b")


def parse_verdict(text: str) -> str | None:
    """"A", "B", "tie", or None when the judge's reply names none of them."""
    m = _VERDICT.search(text or "") or _LOOSE.search(text or "")
    if not m:
        return None
    v = m.group(1)
    return "tie" if v.lower() == "tie" else v.upper()


def combine(ours_first: str | None, ours_second: str | None) -> str:
    """Verdict with our answer shown as A, then as B -> "win" / "lose" / "tie" for our model. Agreement counts;
    a win (loss) with a tie is a win (loss); contradictory verdicts are a tie; an unreadable verdict is a tie."""
    o1 = {"A": "win", "B": "lose"}.get(ours_first or "", "tie")
    o2 = {"B": "win", "A": "lose"}.get(ours_second or "", "tie")
    if o1 == o2:
        return o1
    if "tie" in (o1, o2):
        return o1 if o2 == "tie" else o2
    return "tie"


def _messages(question: str, a: str, b: str, image: bytes | None) -> list[dict]:
    text = TEMPLATE.format(question=question, a=a, b=b)
    content: str | list = text
    if image is not None:
        url = "data:image/jpeg;base64," + base64.b64encode(image).decode("ascii")
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def judge(examples: Sequence[Example], ours: dict[str, str], journal_path: str, *, base_url: str, model: str,
          api_key: str | None = None, concurrency: int = 8, max_tokens: int = 512, temperature: float = 0.0,
          timeout: float = 120.0, read_image=None, progress: bool = False) -> dict:
    """Judge every example (both orders). Returns {"per_example": {id: {...}}, "win", "lose", "tie" (percent),
    "unparsed", "n"}. Raises if a request still failed after syphus's retries (a rerun resumes)."""
    from syphus.engine import Endpoint, send_all
    from syphus.journal import Journal

    if not base_url or not model:
        raise ValueError("pairwise judging needs config.judge.base_url and config.judge.model")
    task = "pairwise"
    journal = Journal(journal_path)
    try:
        entries = []
        for seq, ex in enumerate(examples):
            image = read_image(ex.images[0]) if (read_image is not None and ex.images) else None
            for order, (a, b) in (("ours_first", (ours[ex.id], ex.answers[0])),
                                  ("ours_second", (ex.answers[0], ours[ex.id]))):
                body = {"model": model, "messages": _messages(ex.question, a, b, image), "temperature": temperature,
                        "max_tokens": max_tokens}
                entries.append((f"{ex.id}/{order}", 2 * seq + (order == "ours_second"), body, {"id": ex.id,
                                                                                                 "order": order}))
        journal.add_many(task, entries)
        todo = journal.todo(task)
        if todo:
            ep = Endpoint(base_url=base_url, api_key=api_key, concurrency=concurrency, timeout=timeout,
                          progress=progress)
            asyncio.run(send_all(journal, todo, ep, desc="judge"))
        verdicts: dict[str, dict[str, str | None]] = {}
        failed = []
        for item_id, meta, status, response, _, error in journal.items(task):
            if status != "done":
                failed.append(f"{item_id}: {error}")
                continue
            verdicts.setdefault(meta["id"], {})[meta["order"]] = parse_verdict(response)
    finally:
        journal.close()
    if failed:
        raise RuntimeError(f"judge: {len(failed)} request(s) failed ({failed[0]}); rerun to retry them "
                           f"(journal {journal_path})")
    per, counts, unparsed = {}, {"win": 0, "lose": 0, "tie": 0}, 0
    for ex in examples:
        v = verdicts[ex.id]
        outcome = combine(v.get("ours_first"), v.get("ours_second"))
        unparsed += sum(x is None for x in v.values())
        counts[outcome] += 1
        per[ex.id] = {"ours_first": v.get("ours_first"), "ours_second": v.get("ours_second"), "outcome": outcome}
    n = len(examples)
    return {"per_example": per, "n": n, "unparsed": unparsed, **{k: 100.0 * c / n for k, c in counts.items()}}


def api_key_from_env(name: str) -> str | None:
    return os.environ.get(name) if name else None

"""Turning model text into validated data: Question/Answer pairs and JSON objects.

Structured output (a JSON schema in `response_format`) is preferred; endpoints without it answer in text, so
every parser also accepts plain `Question: ... / Answer: ...` text or JSON wrapped in prose or code fences.
Parsers never drop a response silently: they return (value, None) or (None, reason).
"""

from __future__ import annotations

import json
import re

QA_SCHEMA = {
    "name": "qa_pairs", "strict": True,
    "schema": {"type": "object", "additionalProperties": False, "required": ["pairs"], "properties": {
        "pairs": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["question", "answer"],
            "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}}}},
}

MAX_QUESTION_CHARS = 1000
MAX_ANSWER_CHARS = 6000


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": schema}


def json_instruction(schema: dict) -> str:
    """Sentence appended to a system message when the reply must be JSON (also names the schema for readers)."""
    return (f"Reply with one JSON object only, no prose (json schema: {schema['name']}): "
            f"{json.dumps(schema['schema'], separators=(',', ':'))}")


def render_pairs(pairs: list[dict], as_json: bool) -> str:
    """How an assistant turn of an in-context example looks, matching the requested output format."""
    if as_json:
        return json.dumps({"pairs": [{"question": p["question"], "answer": p["answer"]} for p in pairs]},
                          ensure_ascii=False)
    return "\n".join(f"Question: {p['question']}\nAnswer: {p['answer']}\n" for p in pairs)


def extract_json(text: str):
    """The first JSON object in `text` (bare, fenced, or inside prose); raises ValueError if none parses."""
    text = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    candidates = [text] + ([fence.group(1)] if fence else [])
    start = text.find("{")
    if start >= 0:
        candidates.append(text[start: text.rfind("}") + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except ValueError:
            continue
    raise ValueError("no JSON object found")


_QA_RE = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:\*\*)?(question|answer|q|a)(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*", re.I | re.M)


def _pairs_from_text(text: str) -> list[dict]:
    marks = list(_QA_RE.finditer(text))
    pairs, question = [], None
    for i, m in enumerate(marks):
        body = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
        if m.group(1).lower() in ("question", "q"):
            if question is not None:
                raise ValueError(f"question without an answer: {question[:60]!r}")
            question = body
        else:
            if question is None:
                raise ValueError(f"answer without a question: {body[:60]!r}")
            pairs.append({"question": question, "answer": body})
            question = None
    if question is not None:
        raise ValueError(f"last question has no answer: {question[:60]!r}")
    return pairs


def parse_pairs(text: str, finish_reason: str | None = None) -> tuple[list[dict] | None, str | None]:
    """Question/Answer pairs from a response, or (None, reason) for an invalid one."""
    if finish_reason == "length":
        return None, "truncated by the model (finish_reason=length)"
    if finish_reason == "content_filter":
        return None, "blocked by the endpoint's content filter"
    if not text or not text.strip():
        return None, "empty response"
    pairs = None
    if "{" in text:
        try:
            obj = extract_json(text)
            items = obj.get("pairs") if isinstance(obj, dict) else obj
            if not isinstance(items, list):
                return None, "JSON response without a 'pairs' list"
            pairs = []
            for p in items:
                if not isinstance(p, dict) or not isinstance(p.get("question"), str) or not isinstance(
                        p.get("answer"), str):
                    return None, f"JSON pair is not {{question: str, answer: str}}: {str(p)[:80]}"
                pairs.append({"question": p["question"].strip(), "answer": p["answer"].strip()})
        except ValueError:
            pairs = None
    if pairs is None:
        try:
            pairs = _pairs_from_text(text)
        except ValueError as e:
            return None, f"unparseable Question/Answer text: {e}"
    if not pairs:
        return None, "no Question/Answer pairs found"
    seen = set()
    for i, p in enumerate(pairs, 1):
        if not p["question"] or not p["answer"]:
            return None, f"pair {i} has an empty question or answer"
        if len(p["question"]) > MAX_QUESTION_CHARS or len(p["answer"]) > MAX_ANSWER_CHARS:
            return None, f"pair {i} is too long ({len(p['question'])}/{len(p['answer'])} chars)"
        if p["question"].lower() in seen:
            return None, f"pair {i} repeats an earlier question"
        seen.add(p["question"].lower())
    return pairs, None

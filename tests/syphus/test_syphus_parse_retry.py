import email.utils
import random
import time

import pytest

from syphus.parse import extract_json, parse_pairs
from syphus.retry import RequestError, RetryPolicy, parse_retry_after


@pytest.mark.parametrize("text", [
    '{"pairs": [{"question": "What is red?", "answer": "The cup."}]}',
    'Sure!\n```json\n{"pairs": [{"question": "What is red?", "answer": "The cup."}]}\n```',
    "Question: What is red?\nAnswer: The cup.\n",
    "1. **Question:** What is red?\n**Answer:** The cup.",
    "Q: What is red?\nA: The cup.",
])
def test_pairs_from_json_and_text(text):
    assert parse_pairs(text) == ([{"question": "What is red?", "answer": "The cup."}], None)


def test_multiline_answers_and_several_pairs():
    pairs, err = parse_pairs("Question: One?\nAnswer: first line\nsecond line\n\nQuestion: Two?\nAnswer: B")
    assert err is None and pairs == [{"question": "One?", "answer": "first line\nsecond line"},
                                     {"question": "Two?", "answer": "B"}]


@pytest.mark.parametrize("text,finish,reason", [
    ("Question: a?\nAnswer: b", "length", "finish_reason=length"),
    ("", "stop", "empty response"),
    ("Question: a?\nAnswer: b\nQuestion: c?", "stop", "last question has no answer"),
    ("Answer: b", "stop", "answer without a question"),
    ("Question: a?\nQuestion: c?\nAnswer: b", "stop", "question without an answer"),
    ("Here are some thoughts about the image.", "stop", "no Question/Answer pairs"),
    ('{"pairs": [{"question": "a?"}]}', "stop", "JSON pair is not"),
    ('{"items": []}', "stop", "without a 'pairs' list"),
    ("Question: a?\nAnswer: b\nQuestion: A?\nAnswer: c", "stop", "repeats an earlier question"),
    ("Question: a?\nAnswer: ", "stop", "empty question or answer"),
])
def test_invalid_responses_have_reasons(text, finish, reason):
    pairs, err = parse_pairs(text, finish)
    assert pairs is None and reason in err


def test_extract_json_rejects_prose():
    assert extract_json('answer: {"a": 1} done') == {"a": 1}
    with pytest.raises(ValueError):
        extract_json("no json here")


def test_retry_after_parsing():
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after({"retry-after": date}) <= 30
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_is_bounded_jittered_and_honours_retry_after():
    pol = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=4.0, max_retry_after=10)
    rng = random.Random(0)
    err = RequestError("HTTP 503", True)
    delays = [pol.delay(a, err, rng) for a in range(1, 8) for _ in range(20)]
    assert max(delays) <= 4.0 and min(delays) >= 0 and len(set(delays)) > 100
    assert 2.0 <= pol.delay(1, RequestError("HTTP 429", True, retry_after=2.0), rng) < 2.06
    assert pol.delay(1, RequestError("HTTP 429", True, retry_after=3600), rng) < 10.1

"""Prompt text, ids, labels and media layout per group; the golden fixtures' ids/labels are reproduced exactly."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from otter_jax.data import episodes
from otter_jax.data.bad_input import BadRecord
from otter_jax.data.episodes import Turn
from otter_jax.data.tokenizer import special_ids, word_level_tokenizer

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden" / "otter_llama_tiny"
CHUNK = re.compile(r"(?P<img><image>)?User:(?P<q>.*?) GPT:<answer>(?P<a>.*?)<\|endofchunk\|>")


def _turns(text: str) -> tuple[list[Turn], list[bool]]:
    """Golden text -> turns (each with a fake image index if its chunk starts with <image>)."""
    m = list(CHUNK.finditer(text))
    assert "".join(x.group(0) for x in m) == text
    return [Turn(x["q"], x["a"], (k,) if x["img"] else ()) for k, x in enumerate(m)], [bool(x["img"]) for x in m]


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_dir():
        pytest.skip(f"golden fixtures not at {GOLDEN}")
    tok = word_level_tokenizer(json.loads((GOLDEN / "vocab.json").read_text()))
    summary = json.loads((GOLDEN / "summary.json").read_text())
    return tok, summary


def test_special_ids_match_golden(golden):
    tok, summary = golden
    sp, want = special_ids(tok), summary["tokenizer"]
    assert (sp.bos, sp.eos, sp.pad, sp.media, sp.endofchunk, sp.answer) == (
        want["bos_token_id"], want["eos_token_id"], want["pad_token_id"], want["media_token_id"],
        want["endofchunk_token_id"], want["answer_token_id"])


@pytest.mark.parametrize("case,group", [("image", "IMAGE_TEXT_IN_CONTEXT"), ("video", "VIDEO_TEXT")])
def test_golden_ids_and_labels(golden, case, group):
    tok, summary = golden
    sp = special_ids(tok)
    inputs = np.load(GOLDEN / f"inputs_{case}.npz")
    L = inputs["input_ids"].shape[1]
    for row, text in enumerate(summary["cases"][case]["texts"]):
        turns, _ = _turns(text)
        if group == "VIDEO_TEXT":  # every turn of a clip conversation lists the clip's frames
            turns = [Turn(t.instruction, t.answer, (0, 1, 2)) for t in turns]
        ep = episodes.build_episode(group, turns, tok, sp, max_seq_len=L, max_media=4, num_frames=3)
        assert ep.text == text  # episode -> text is the upstream prompt format exactly
        padded = episodes.pad_to(ep, L, sp.pad)
        np.testing.assert_array_equal(padded["input_ids"], inputs["input_ids"][row])
        np.testing.assert_array_equal(padded["attention_mask"], inputs["attention_mask"][row])
        np.testing.assert_array_equal(padded["labels"], inputs["labels"][row])
        n_media = inputs["vision_x"].shape[1] if group == "IMAGE_TEXT_IN_CONTEXT" else 1
        assert len(ep.media) == n_media == int((ep.input_ids == sp.media).sum())


@pytest.fixture(scope="module")
def tok():
    from otter_jax.data.demo import TOKENIZER_DIR
    from otter_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(TOKENIZER_DIR)


TURNS = [Turn("What is it?", "A cat.", (10,)), Turn("And this?", "A dog.", (11, 12)), Turn("Last?", "Yes.", (13,))]


def test_layout_per_group_hand_checked(tok):
    sp = special_ids(tok)
    kw = dict(max_seq_len=512, max_media=8, num_frames=4)
    ic = episodes.build_episode("IMAGE_TEXT_IN_CONTEXT", TURNS, tok, sp, **kw)
    assert ic.text == ("<image>User:What is it? GPT:<answer>A cat.<|endofchunk|>"
                       "<image><image>User:And this? GPT:<answer>A dog.<|endofchunk|>"
                       "<image>User:Last? GPT:<answer>Yes.<|endofchunk|>")
    assert ic.media == [[10], [11], [12], [13]]
    conv = episodes.build_episode("IMAGE_TEXT", TURNS, tok, sp, **kw)
    assert conv.text == ("<image>User:What is it? GPT:<answer>A cat.<|endofchunk|>"
                         "User:And this? GPT:<answer>A dog.<|endofchunk|>User:Last? GPT:<answer>Yes.<|endofchunk|>")
    assert conv.media == [[13]]  # the query's own image, once
    video = episodes.build_episode("VIDEO_TEXT", TURNS[:2], tok, sp, **kw)
    assert video.media == [[11, 11, 12, 12]]  # 2 frames uniformly resampled to 4
    assert video.text.count("<image>") == 1 and video.text.startswith("<image>User:What is it?")
    text = episodes.build_episode("TEXT_ONLY", TURNS, tok, sp, **kw)
    assert text.media == [] and "<image>" not in text.text
    # labels: exactly the answer tokens + endofchunk of every chunk, and the final eos
    ids, labels = conv.input_ids, conv.labels
    supervised = tok.decode(ids[labels != -100])
    assert supervised == "A cat.<|endofchunk|>A dog.<|endofchunk|>Yes.<|endofchunk|></s>"
    assert ids[0] == sp.bos and ids[-1] == sp.eos and labels[0] == -100


def test_truncation_drops_leading_chunks_with_their_media(tok):
    sp = special_ids(tok)
    full = episodes.build_episode("IMAGE_TEXT_IN_CONTEXT", TURNS, tok, sp, max_seq_len=512, max_media=8,
                                  num_frames=1)
    short = episodes.build_episode("IMAGE_TEXT_IN_CONTEXT", TURNS, tok, sp, max_seq_len=len(full.input_ids) - 1,
                                   max_media=8, num_frames=1)
    assert short.dropped_context == 1 and short.media == [[11], [12], [13]]
    assert short.text.startswith("<image><image>User:And this?")
    few_media = episodes.build_episode("IMAGE_TEXT_IN_CONTEXT", TURNS, tok, sp, max_seq_len=512, max_media=2,
                                       num_frames=1)
    assert few_media.media == [[13]] and few_media.text.count("<image>") == 1
    conv = episodes.build_episode("IMAGE_TEXT", TURNS, tok, sp, max_seq_len=25, max_media=8, num_frames=1)
    assert conv.text.startswith("<image>User:Last?")  # the <image> moves to the new first chunk
    assert int((conv.input_ids == sp.media).sum()) == len(conv.media) == 1


def test_query_that_cannot_fit_is_rejected_with_reason(tok):
    sp = special_ids(tok)
    with pytest.raises(BadRecord, match=r"too_long: record 'Q1' in f\.json"):
        episodes.build_episode("IMAGE_TEXT", TURNS, tok, sp, max_seq_len=5, max_media=8, num_frames=1,
                               record_id="Q1", file="f.json")
    with pytest.raises(BadRecord, match="too_many_media"):
        episodes.build_episode("IMAGE_TEXT_IN_CONTEXT", [TURNS[1]], tok, sp, max_seq_len=512, max_media=1,
                               num_frames=1)


def test_literal_special_tokens_in_user_text_are_scrubbed(tok):
    sp = special_ids(tok)
    ep = episodes.build_episode("IMAGE_TEXT", [Turn("look <image> here", "ok<|endofchunk|>", (1,))], tok, sp,
                                max_seq_len=512, max_media=4, num_frames=1)
    assert int((ep.input_ids == sp.media).sum()) == 1 and int((ep.input_ids == sp.endofchunk).sum()) == 1

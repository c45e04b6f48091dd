"""Episode assembly: records -> prompt text -> token ids, labels and media layout (the upstream "simple" format).

Per chunk: `<image>...User:{instruction} GPT:<answer>{answer}<|endofchunk|>`; sequence = [bos] + ids + [eos].
Layout per group (in-context examples first, query last):
  IMAGE_TEXT_IN_CONTEXT  every chunk starts with one `<image>` per image of its own record; each image = one media
  IMAGE_TEXT             conversation: the query's images (one `<image>` each) before the first chunk only
  VIDEO_TEXT             one `<image>` before the first chunk; the query's frames = one media with F frames
  TEXT_ONLY              no `<image>`, no media
Truncation drops whole in-context chunks from the front (with their media) until the sequence fits `max_seq_len` and
`max_media`; so an `<image>` token never loses its media or vice versa. If the query chunk alone does not fit, the
episode is rejected (reason too_long / too_many_media).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from otter_jax.data.bad_input import BadRecord
from otter_jax.data.tokenizer import ANSWER, ENDOFCHUNK, MEDIA, PAD, SpecialIds
from otter_jax.models.config import IGNORE_INDEX as IGNORE  # one constant for the loader and the loss
_SCRUB = (ENDOFCHUNK, MEDIA, ANSWER, PAD)


@dataclasses.dataclass(frozen=True)
class Turn:
    """One instruction-response pair and the store indices of its own images."""

    instruction: str
    answer: str
    images: tuple[int, ...] = ()


@dataclasses.dataclass
class Episode:
    """Unpadded token ids/labels and media layout: `media[t]` = store image indices of media item t (its frames)."""

    input_ids: np.ndarray
    labels: np.ndarray
    media: list[list[int]]
    text: str
    dropped_context: int
    record_id: str = "?"  # where it came from, for messages about it
    file: str = "?"


def _clean(text: str) -> str:
    for tok in _SCRUB:  # a literal special token in user text would break the token/media pairing
        text = text.replace(tok, "")
    return text.strip()


def chunk_text(instruction: str, answer: str, n_media: int) -> str:
    return MEDIA * n_media + f"User:{_clean(instruction)} GPT:{ANSWER}{_clean(answer)}{ENDOFCHUNK}"


def prompt_text(context: list[tuple[str, str, int]], question: str, n_media: int) -> str:
    """Inference prompt: in-context chunks (instruction, answer, n_media) then `<image>User:{q} GPT:<answer>`."""
    return "".join(chunk_text(*c) for c in context) + MEDIA * n_media + f"User:{_clean(question)} GPT:{ANSWER}"


def resample_frames(frames: list[int], num_frames: int) -> list[int]:
    """Uniform resampling to exactly num_frames (np.linspace, as upstream); short clips repeat frames."""
    idx = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return [frames[i] for i in idx]


def layout(group: str, turns: list[Turn], num_frames: int) -> tuple[list[str], list[list[int]]]:
    """Chunk texts and media items for the turns of one episode (last turn = query)."""
    query = turns[-1]
    if group == "IMAGE_TEXT_IN_CONTEXT":
        return ([chunk_text(t.instruction, t.answer, len(t.images)) for t in turns],
                [[i] for t in turns for i in t.images])
    if group == "IMAGE_TEXT":
        n = len(query.images)
        media = [[i] for i in query.images]
    elif group == "VIDEO_TEXT":
        n, media = (1, [resample_frames(list(query.images), num_frames)]) if query.images else (0, [])
    elif group == "TEXT_ONLY":
        n, media = 0, []
    else:
        raise ValueError(f"unknown group {group!r}")
    return [chunk_text(t.instruction, t.answer, n if k == 0 else 0) for k, t in enumerate(turns)], media


def make_labels(ids: np.ndarray, sp: SpecialIds) -> np.ndarray:
    """Golden label rule: eos kept; after each `<answer>` supervise up to and including the next endofchunk;
    `<answer>` itself and column 0 ignored."""
    labels = np.where(ids == sp.eos, ids, IGNORE).astype(np.int32)
    ends = np.flatnonzero(ids == sp.endofchunk)
    for a in np.flatnonzero(ids == sp.answer):
        after = ends[ends > a]
        if len(after):
            labels[a + 1:after[0] + 1] = ids[a + 1:after[0] + 1]
    labels[0] = IGNORE
    return labels


def encode(text: str, tok, sp: SpecialIds) -> np.ndarray:
    backend = getattr(tok, "backend_tokenizer", None)  # the Rust tokenizer: same ids, without the wrapper's cost
    ids = (backend.encode(text, add_special_tokens=False).ids if backend is not None
           else tok(text, add_special_tokens=False)["input_ids"])
    return np.asarray(([sp.bos] if sp.bos is not None else []) + ids + [sp.eos], dtype=np.int32)


def build_episode(group: str, turns: list[Turn], tok, sp: SpecialIds, *, max_seq_len: int, max_media: int,
                  num_frames: int, record_id: str = "?", file: str = "?") -> Episode:
    """Assemble, tokenise and truncate one episode; raises BadRecord if even the query alone does not fit."""
    for drop in range(len(turns)):
        chunks, media = layout(group, turns[drop:], num_frames)
        if len(media) > max_media:
            continue
        text = "".join(chunks)
        ids = encode(text, tok, sp)
        if len(ids) > max_seq_len:
            continue
        n_tokens = int((ids == sp.media).sum())
        if n_tokens != len(media):
            raise ValueError(f"record {record_id!r} in {file}: {n_tokens} <image> tokens for {len(media)} media")
        return Episode(ids, make_labels(ids, sp), media, text, drop, record_id, file)
    _, media = layout(group, turns[-1:], num_frames)
    if len(media) > max_media:
        raise BadRecord("too_many_media", record_id, file, f"query alone has {len(media)} media > max_media "
                        f"{max_media}")
    raise BadRecord("too_long", record_id, file, f"query chunk alone exceeds max_seq_len {max_seq_len}")


def pad_to(ep: Episode, max_seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad ids (pad id), mask (0) and labels (-100) to max_seq_len."""
    n = len(ep.input_ids)
    ids = np.full(max_seq_len, pad_id, np.int32)
    ids[:n] = ep.input_ids
    labels = np.full(max_seq_len, IGNORE, np.int32)
    labels[:n] = ep.labels
    mask = np.zeros(max_seq_len, np.int32)
    mask[:n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

"""From user requests (image files, a question, in-context examples, video frames) to model inputs, and from
generated ids back to answers.

Each in-context example and each query image is its own media item (F = 1); a video is one media item whose frames
are resampled uniformly to `num_frames`. Prompts follow the training format (see otter_jax.data.episodes) and are
left-padded so that every row's answer starts at the same column.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from otter_jax.data.episodes import prompt_text
from otter_jax.data.images import decode_resize, normalize_host
from otter_jax.data.tokenizer import ENDOFCHUNK, add_otter_tokens, load_tokenizer, word_level_tokenizer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclasses.dataclass
class Example:
    image: str
    question: str
    answer: str


@dataclasses.dataclass
class Request:
    prompt: str
    images: list[str] = dataclasses.field(default_factory=list)  # query images, one media each
    video: list[str] = dataclasses.field(default_factory=list)  # frame files of one clip
    in_context: list[Example] = dataclasses.field(default_factory=list)
    id: str = "0"

    @classmethod
    def from_dict(cls, d: dict, where: str = "request") -> "Request":
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str):
            raise ValueError(f"{where}: a request needs a string 'prompt'")
        video = d.get("video") or []
        if isinstance(video, str):
            video = frame_files(video)
        ctx = []
        for j, e in enumerate(d.get("in_context") or []):
            if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("image", "question", "answer")):
                raise ValueError(f"{where}: in_context[{j}] needs string 'image', 'question' and 'answer'")
            ctx.append(Example(e["image"], e["question"], e["answer"]))
        return cls(prompt=d["prompt"], images=list(d.get("images") or []), video=list(video), in_context=ctx,
                   id=str(d.get("id", where)))

    @property
    def num_frames(self) -> int:
        return len(self.video) or 1


def frame_files(folder: str) -> list[str]:
    """The image files of a folder, in name order (frame_0001.jpg, ...)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: video frame folder does not exist")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"{folder}: no image files")
    return [os.path.join(folder, f) for f in files]


def load_checkpoint_tokenizer(ckpt_dir: str):
    """The tokenizer stored with a checkpoint: an HF tokenizer folder, or a word-level `vocab.json`."""
    if os.path.exists(os.path.join(ckpt_dir, "tokenizer.json")) or \
            os.path.exists(os.path.join(ckpt_dir, "tokenizer_config.json")):
        return load_tokenizer(ckpt_dir)
    vocab_file = os.path.join(ckpt_dir, "vocab.json")
    if os.path.exists(vocab_file):
        import json

        with open(vocab_file) as fh:
            vocab = json.load(fh)
        bos_eos = ("<s>", "</s>") if "<s>" in vocab else ("<|endoftext|>", "<|endoftext|>")
        unk = "<unk>" if "<unk>" in vocab else bos_eos[0]
        return add_otter_tokens(word_level_tokenizer(vocab, unk=unk, bos=bos_eos[0], eos=bos_eos[1]))
    raise FileNotFoundError(f"{ckpt_dir}: no tokenizer files (tokenizer.json, tokenizer_config.json or vocab.json)")


def _load_image(path: str, size: int, resize: str) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            return normalize_host(decode_resize(fh.read(), size, resize))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file does not exist") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode image ({e})") from e


def _media(req: Request, num_frames: int | None, size: int, resize: str) -> list[np.ndarray]:
    """The request's media as [F, 3, H, W] arrays, in prompt order."""
    items = [[ex.image] for ex in req.in_context]
    if req.video:
        frames = req.video
        if num_frames:
            frames = [frames[i] for i in np.linspace(0, len(frames) - 1, num_frames).round().astype(int)]
        items.append(frames)
    else:
        items += [[p] for p in req.images]
    return [np.stack([_load_image(p, size, resize) for p in item]) for item in items]


def prompt_ids(req: Request, tok) -> list[int]:
    """[bos] + prompt tokens (no eos); bos only when the tokenizer's bos differs from its eos (LLaMA, not MPT)."""
    ctx = [(ex.question, ex.answer, 1) for ex in req.in_context]
    return context_prompt_ids(ctx, req.prompt, 1 if req.video else len(req.images), tok)


def context_prompt_ids(context: list[tuple[str, str, int]], question: str, n_query: int, tok) -> list[int]:
    """`prompt_ids` for in-context examples given as (question, answer, media count): the server's chat turns may
    hold several images or none."""
    ids = tok(prompt_text(context, question, n_query), add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id
    return ([bos] if bos is not None and bos != tok.eos_token_id else []) + list(ids)


def make_batch(requests: Sequence[Request], tok, *, image_size: int, resize: str = "squash",
               num_frames: int | None = None, pad_id: int = 0) -> dict[str, np.ndarray]:
    """vision_x [B, T, F, 3, H, W] (zero media slots where a row has fewer), left-padded input_ids/attention_mask."""
    media = [_media(r, num_frames, image_size, resize) for r in requests]
    frames = {m.shape[0] for row in media for m in row}
    if len(frames) > 1:
        raise ValueError(f"requests in one batch must have the same frame count, got {sorted(frames)}")
    f = frames.pop() if frames else 1
    t = max(1, max(len(row) for row in media))
    vision_x = np.zeros((len(requests), t, f, 3, image_size, image_size), np.float32)
    for b, row in enumerate(media):
        for j, m in enumerate(row):
            vision_x[b, j] = m
    ids = [prompt_ids(r, tok) for r in requests]
    length = max(len(x) for x in ids)
    input_ids = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for b, x in enumerate(ids):
        input_ids[b, length - len(x):] = x
        mask[b, length - len(x):] = 1
    return {"vision_x": vision_x, "input_ids": input_ids, "attention_mask": mask}


def answers(sequences: np.ndarray, prompt_len: int, tok) -> list[str]:
    """The generated text after the prompt (which ends in `<answer>`), cut at `<|endofchunk|>`."""
    stop_id = tok.convert_tokens_to_ids(ENDOFCHUNK)
    out = []
    for row in sequences[:, prompt_len:]:
        stops = np.flatnonzero(row == stop_id)
        row = row[:stops[0]] if len(stops) else row
        out.append(tok.decode(row.tolist(), skip_special_tokens=True).strip())
    return out

"""Finding the special token ids (`<image>`, `<|endofchunk|>`, `<answer>`, pad, bos, eos) of a checkpoint.

Upstream configs do not store them; they live in the tokenizer files next to the weights. We read, in order:
`tokenizer.json` (vocabulary + added tokens), `added_tokens.json`, `vocab.json`, then bos/eos from the text config.
"""
from __future__ import annotations

import json
import os
from typing import Any

from otter_jax.models.config import SpecialTokens

MEDIA, ENDOFCHUNK, ANSWER = "<image>", "<|endofchunk|>", "<answer>"
PAD_CANDIDATES = ("<PAD>", "<pad>", "[PAD]")
BOS_CANDIDATES = ("<s>", "<|endoftext|>")
EOS_CANDIDATES = ("</s>", "<|endoftext|>")


def read_vocab(directory: str) -> dict[str, int]:
    """token -> id from whatever tokenizer files `directory` holds (later files override earlier ones)."""
    vocab: dict[str, int] = {}
    path = os.path.join(directory, "vocab.json")
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
        if isinstance(data, dict):
            vocab.update({k: int(v) for k, v in data.items()})
    path = os.path.join(directory, "tokenizer.json")
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
        model_vocab = (data.get("model") or {}).get("vocab")
        if isinstance(model_vocab, dict):
            vocab.update({k: int(v) for k, v in model_vocab.items()})
        for tok in data.get("added_tokens") or []:
            vocab[tok["content"]] = int(tok["id"])
    path = os.path.join(directory, "added_tokens.json")
    if os.path.exists(path):
        with open(path) as fh:
            vocab.update({k: int(v) for k, v in json.load(fh).items()})
    return vocab


def _special_map(directory: str) -> dict[str, str]:
    path = os.path.join(directory, "special_tokens_map.json")
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        data = json.load(fh)
    return {k: (v["content"] if isinstance(v, dict) else v) for k, v in data.items() if isinstance(v, (str, dict))}


def find_special_tokens(directory: str, text_config: dict[str, Any] | None = None) -> SpecialTokens | None:
    """The ids, or None when the directory has no tokenizer files naming `<image>`."""
    vocab = read_vocab(directory)
    if MEDIA not in vocab or ENDOFCHUNK not in vocab or ANSWER not in vocab:
        return None
    special = _special_map(directory)
    text_config = text_config or {}

    def pick(role: str, candidates: tuple[str, ...]) -> int | None:
        if special.get(f"{role}_token") in vocab:
            return vocab[special[f"{role}_token"]]
        if text_config.get(f"{role}_token_id") is not None:
            return int(text_config[f"{role}_token_id"])
        return next((vocab[c] for c in candidates if c in vocab), None)

    return SpecialTokens(media=vocab[MEDIA], endofchunk=vocab[ENDOFCHUNK], answer=vocab[ANSWER],
                         pad=pick("pad", PAD_CANDIDATES), bos=pick("bos", BOS_CANDIDATES),
                         eos=pick("eos", EOS_CANDIDATES))

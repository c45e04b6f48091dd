"""Tokenizers: load any HF tokenizer folder with Otter's special tokens; build small ones for demo and tests.

Nothing is downloaded: `load_tokenizer` reads a local folder only. The special tokens are appended exactly as the
reference constructor does (`<|endofchunk|>`, `<image>`, `<answer>`, then `<PAD>` only if there is no pad token).
"""
from __future__ import annotations

import dataclasses
import os

ENDOFCHUNK, MEDIA, ANSWER, PAD = "<|endofchunk|>", "<image>", "<answer>", "<PAD>"
OTTER_TOKENS = (ENDOFCHUNK, MEDIA, ANSWER)


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids the episode code needs; bos may be None for tokenizers without one (then no bos is prepended)."""

    bos: int | None
    eos: int
    pad: int
    media: int
    endofchunk: int
    answer: int


def add_otter_tokens(tok):
    """Add the Otter special tokens (idempotent) and `<PAD>` as pad if the tokenizer has no pad token."""
    missing = [t for t in OTTER_TOKENS if t not in tok.get_vocab()]
    if missing or not all(t in tok.all_special_tokens for t in OTTER_TOKENS):
        tok.add_special_tokens({"additional_special_tokens": list(OTTER_TOKENS)})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD})
    return tok


def load_tokenizer(path: str | os.PathLike):
    """A local HF tokenizer folder (tokenizer.json / tokenizer_config.json) with the Otter tokens added."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder {path} does not exist (nothing is downloaded from a hub)")
    # A checkpoint folder's config.json says model_type "otter", which transformers does not know: it warns "You are
    # using a model of type otter to instantiate a model of type ..." although only the tokenizer files are read.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)
    return add_otter_tokens(tok)


def special_ids(tok) -> SpecialIds:
    ids = {t: tok.convert_tokens_to_ids(t) for t in OTTER_TOKENS}
    if tok.eos_token_id is None:
        raise ValueError("tokenizer has no eos token; Otter sequences end with eos")
    return SpecialIds(bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id, media=ids[MEDIA],
                      endofchunk=ids[ENDOFCHUNK], answer=ids[ANSWER])


def word_level_tokenizer(vocab: dict[str, int], unk="<unk>", bos="<s>", eos="</s>"):
    """Word-level tokenizer over a fixed vocab (runs of word chars / punctuation, whitespace dropped).

    This is the stand-in tokenizer of the golden fixtures; the Otter tokens must already be in `vocab`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=dict(vocab), unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=unk, bos_token=bos, eos_token=eos,
                                  pad_token=PAD if PAD in vocab else None)
    return add_otter_tokens(tok)


def train_bpe_tokenizer(texts, vocab_size: int = 2000):
    """A small byte-level BPE trained on `texts` with bos/eos/unk and the Otter tokens (for the demo data)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    return add_otter_tokens(tok)

"""Checkpoints written by the original's save_pretrained carry no tokenizer files: they still load and run."""
import json
import logging
import shutil

import numpy as np
import pytest

from golden_helpers import golden_case, golden_dir
from otter_jax.convert.otter_hf import original_rule_tokens, read_config
from otter_jax.convert.torch_io import CheckpointError


def _weights_only(name, dst, **text_overrides):
    """The golden checkpoint as save_pretrained leaves it: config.json + safetensors, no vocab/tokenizer files."""
    src = golden_dir(name)
    dst.mkdir()
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"].update(text_overrides)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _base_tokenizer(name, dst, unk="<unk>", bos="<s>", eos="</s>"):
    """The base model's tokenizer folder (golden vocab without Otter's tokens), as a user would have it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = json.loads((golden_dir(name) / "vocab.json").read_text())
    base = {k: v for k, v in vocab.items() if k not in ("<|endofchunk|>", "<image>", "<answer>", "<PAD>")}
    core = Tokenizer(models.WordLevel(vocab=base, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token=unk, bos_token=bos,
                            eos_token=eos).save_pretrained(str(dst))
    return str(dst)


def test_golden_checkpoint_without_tokenizer_files_runs_with_base_tokenizer(tmp_path, caplog):
    from otter_jax.convert import load_torch_checkpoint

    ckpt = _weights_only("otter_llama_tiny", tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING, logger="otter_jax"):
        assert read_config(str(ckpt)).tokens is None   # the name says LLaMA: 32000 base tokens cannot fit 204
    assert "beyond the model's vocab_size 204; pass --tokenizer DIR" in caplog.text
    model, cfg = load_torch_checkpoint(str(ckpt), tokenizer=_base_tokenizer("otter_llama_tiny", tmp_path / "tok"))
    tok = json.loads((golden_dir("otter_llama_tiny") / "summary.json").read_text())["tokenizer"]
    assert (cfg.tokens.endofchunk, cfg.tokens.media, cfg.tokens.answer, cfg.tokens.pad, cfg.tokens.bos,
            cfg.tokens.eos) == (tok["endofchunk_token_id"], tok["media_token_id"], tok["answer_token_id"],
                                tok["pad_token_id"], tok["bos_token_id"], tok["eos_token_id"])
    inputs, ref = golden_case("otter_llama_tiny", "image")
    out = model(inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert float(np.abs(np.asarray(out.logits, np.float64) - ref["logits"]).max()) <= 1e-4


@pytest.mark.parametrize("name_or_path,model_type,vocab,want", [
    ("huggyllama/llama-7b", "llama", 32004, (32000, 32001, 32002, 32003, 1, 2)),
    ("meta-llama/Llama-2-7b-chat-hf", "llama", 32004, (32000, 32001, 32002, 32003, 1, 2)),
    ("mosaicml/mpt-7b", "mpt", 50432, (50277, 50278, 50279, 50280, 0, 0)),
    ("", "mpt", 50432, (50277, 50278, 50279, 50280, 0, 0)),          # no name: the model type decides
])
def test_original_rule_on_released_bases(name_or_path, model_type, vocab, want, caplog):
    with caplog.at_level(logging.WARNING, logger="otter_jax"):
        t = original_rule_tokens({"_name_or_path": name_or_path, "vocab_size": vocab}, model_type, "ckpt")
    assert (t.endofchunk, t.media, t.answer, t.pad, t.bos, t.eos) == want
    msg = caplog.text
    assert "original's rule" in msg and f"<image>={want[1]}" in msg and "--tokenizer" in msg
    assert (name_or_path or f"type '{model_type}'") in msg


def test_rule_refuses_what_it_cannot_know():
    with pytest.raises(CheckpointError, match="no known base tokenizer"):
        original_rule_tokens({"_name_or_path": "someone/qwen-7b", "vocab_size": 151000}, "qwen", "ckpt")
    with pytest.raises(CheckpointError, match="beyond the model's vocab_size 32000"):
        original_rule_tokens({"_name_or_path": "huggyllama/llama-7b", "vocab_size": 32000}, "llama", "ckpt")


def test_mpt_golden_with_its_base_tokenizer_gets_pad_appended(tmp_path):
    """GPT-NeoX-style base (bos = eos = unk = <|endoftext|>, a `<|padding|>` entry but no pad token): <PAD> is
    appended after the three Otter tokens, as the original does, and the model reproduces the reference."""
    from otter_jax.convert import load_torch_checkpoint

    ckpt = _weights_only("otter_mpt_tiny", tmp_path / "ckpt")
    tok_dir = _base_tokenizer("otter_mpt_tiny", tmp_path / "tok", unk="<|endoftext|>", bos="<|endoftext|>",
                              eos="<|endoftext|>")
    model, cfg = load_torch_checkpoint(str(ckpt), tokenizer=tok_dir)
    assert (cfg.tokens.endofchunk, cfg.tokens.media, cfg.tokens.answer, cfg.tokens.pad) == (199, 200, 201, 202)
    inputs, ref = golden_case("otter_mpt_tiny", "image")
    out = model(inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert float(np.abs(np.asarray(out.logits, np.float64) - ref["logits"]).max()) <= 1e-4


def test_eval_loads_it_with_config_tokenizer(tmp_path):
    import ml_collections

    from otter_jax.evaluate.config import EvalConfigError, defaults
    from otter_jax.evaluate.runner import load_model

    c = defaults()
    c.checkpoint = str(_weights_only("otter_llama_tiny", tmp_path / "ckpt"))
    with pytest.raises(EvalConfigError, match="no tokenizer files .* --config.tokenizer=DIR"):
        load_model(ml_collections.ConfigDict(c))
    c.tokenizer = _base_tokenizer("otter_llama_tiny", tmp_path / "tok")
    model, tok = load_model(ml_collections.ConfigDict(c))
    assert model.cfg.tokens.media == tok.convert_tokens_to_ids("<image>") == 201

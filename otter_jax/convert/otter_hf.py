"""Otter checkpoints in the original HF layout (config.json + safetensors / .bin shards) <-> our model.

Conversion is strict: every expected key must be present with the expected shape and no unknown key may be left
over; all mismatches are reported together in one error, and nothing is written when anything is wrong.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Collection, Mapping, Sequence

import numpy as np
from flax import nnx

from otter_jax import sharding as S
from otter_jax.convert.keymaps import IGNORED_TORCH_SUFFIXES, Rule, RowPart, otter_rules
from otter_jax.convert.torch_io import CheckpointError, TensorSource, atomic_dir_write, save_safetensors
from otter_jax.models.config import ConfigError, OtterConfig, Policy, SpecialTokens
from otter_jax.models.layout import relayout
from otter_jax.models.otter import Otter
from otter_jax.tokens import find_special_tokens

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model")


log = logging.getLogger("otter_jax")

# Base tokenizers of the released Otter models, matched against `text_config._name_or_path` (then model_type):
# (name fragments, base size = len(tokenizer) before Otter's tokens, bos, eos, has a pad token).
# LLaMA-1/2 and Vicuna: 32000 SentencePiece tokens, <s>=1, </s>=2, no pad. MPT-7B / MPT-1B-RedPajama use
# EleutherAI's GPT-NeoX-20B tokenizer: 50277 tokens (len(tokenizer); its model vocab is padded to 50432),
# <|endoftext|>=0 is bos = eos, and no pad token is set (its `<|padding|>` entry is not the pad_token).
BASE_TOKENIZERS = (
    (("mpt", "neox", "redpajama"), "GPT-NeoX-20B (MPT)", 50277, 0, 0, False),
    (("llama", "vicuna", "alpaca"), "LLaMA", 32000, 1, 2, False),
)
MODEL_TYPE_DEFAULT = {"mpt": "mpt", "llama": "llama"}


def original_rule_tokens(text_config: dict, model_type: str, source: str = "") -> SpecialTokens:
    """The ids the original's constructor gives when it rebuilds the tokenizer from the base model (its
    save_pretrained writes no tokenizer files): `<|endofchunk|>`, `<image>`, `<answer>` appended to the base
    tokenizer, then `<PAD>` when the base has no pad token. Logs a warning naming the rule and the base."""
    name = str(text_config.get("_name_or_path") or "")
    entry = next((e for e in BASE_TOKENIZERS if any(f in name.lower() for f in e[0])), None)
    how = f"text_config._name_or_path {name!r}"
    if entry is None:
        frag = MODEL_TYPE_DEFAULT.get(model_type)
        entry = next((e for e in BASE_TOKENIZERS if frag in e[0]), None)
        how = f"text model type {model_type!r}"
    if entry is None:
        raise CheckpointError(f"{source}: no tokenizer files, and no known base tokenizer for {how}; "
                              "pass the base model's tokenizer folder (--tokenizer DIR / tokenizer=)")
    _, label, n, bos, eos, has_pad = entry
    vocab = int(text_config.get("vocab_size") or 0)
    last = n + (2 if has_pad else 3)
    if vocab and last >= vocab:
        raise CheckpointError(f"{source}: the original's token rule on the {label} tokenizer ({n} tokens) gives ids "
                              f"up to {last}, beyond the model's vocab_size {vocab}; pass --tokenizer DIR")
    bos = int(text_config["bos_token_id"]) if text_config.get("bos_token_id") is not None else bos
    eos = int(text_config["eos_token_id"]) if text_config.get("eos_token_id") is not None else eos
    tokens = SpecialTokens(endofchunk=n, media=n + 1, answer=n + 2, pad=None if has_pad else n + 3, bos=bos, eos=eos)
    log.warning("%s: no tokenizer files; special token ids from the original's rule on the %s base tokenizer (from "
                "%s, %d tokens): <|endofchunk|>=%d, <image>=%d, <answer>=%d%s. Pass --tokenizer DIR if the base "
                "tokenizer differs", source, label, how, n, n, n + 1, n + 2, "" if has_pad else f", <PAD>={n + 3}")
    return tokens


def tokens_from_tokenizer(tokenizer_dir: str) -> SpecialTokens:
    """Ids from a tokenizer folder: an Otter one (tokens present) or the base model's (tokens added as the
    original does, so the ids are those the original model was trained with)."""
    from otter_jax.data.tokenizer import load_tokenizer, special_ids

    try:
        sp = special_ids(load_tokenizer(tokenizer_dir))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{tokenizer_dir}: cannot load the tokenizer ({e})") from None
    return SpecialTokens(media=sp.media, endofchunk=sp.endofchunk, answer=sp.answer, pad=sp.pad, bos=sp.bos,
                         eos=sp.eos)


def read_config(src_dir: str, tokenizer: str | None = None) -> OtterConfig:
    """The model config with its special token ids: from `tokenizer` (a folder) when given, else from the
    checkpoint's tokenizer files, else from the original's rule on the base tokenizer (with a warning). When the
    rule cannot apply (unknown base, ids beyond the vocab) the config comes back without ids, with a warning."""
    path = os.path.join(src_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{src_dir}: no config.json")
    with open(path) as fh:
        try:
            d = json.load(fh)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    cfg = OtterConfig.from_hf_dict(d, source=path)
    if tokenizer:
        tokens = tokens_from_tokenizer(tokenizer)
    else:
        tokens = find_special_tokens(src_dir, d.get("text_config"))
        if tokens is None:
            try:
                tokens = original_rule_tokens(d.get("text_config") or {}, cfg.text_model_type, src_dir)
            except CheckpointError as e:   # the weights still load (conversion, inspection); running needs ids
                log.warning("%s; the model has no special token ids until they are given", e)
                return cfg
    if max(tokens.media, tokens.endofchunk, tokens.answer) >= cfg.text.vocab_size:
        raise CheckpointError(f"{src_dir}: special token ids {dataclasses.asdict(tokens)} do not fit the model's "
                              f"vocab_size {cfg.text.vocab_size}")
    return dataclasses.replace(cfg, tokens=tokens)


def abstract_model(cfg: OtterConfig, policy: Policy = Policy()) -> Otter:
    """Shapes of the model in the stacked layout, the one key maps and checkpoints use (see models/layout.py)."""
    policy = dataclasses.replace(policy, scan_layers=True)
    return nnx.eval_shape(lambda: Otter(cfg, policy, rngs=nnx.Rngs(0)))


def param_shapes(abstract: Otter) -> dict[str, tuple[int, ...]]:
    return {".".join(map(str, p)): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(nnx.state(abstract))}


def _slice_shape(rule: Rule, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[1:] if rule.indices is not None else shape


def expected_torch_shapes(cfg: OtterConfig, shapes: Mapping[str, tuple[int, ...]],
                          rules: Sequence[Rule] | None = None) -> dict[str, tuple[int, ...]]:
    out = {}
    for rule in otter_rules(cfg) if rules is None else rules:
        their = rule.transform.their_shape(_slice_shape(rule, shapes[rule.ours]))
        out.update({k: their for k in rule.torch_keys()})
    return out


def check_keys(source_name: str, found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
               optional: Collection[str] = ()):
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped key (`optional` keys may be
    absent, e.g. those another file provides)."""
    optional = set(optional)
    missing = [k for k in expected if k not in found and k not in optional]
    unexpected = [k for k in found if k not in expected and not k.endswith(IGNORED_TORCH_SUFFIXES)]
    misshaped = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{source_name}: checkpoint does not match the model "
             f"({len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} wrong shape)"]
    lines += [f"  missing:     {k}  expected {list(expected[k])}" for k in missing]
    lines += [f"  unexpected:  {k}  found {list(found[k])}" for k in unexpected]
    lines += [f"  wrong shape: {k}  expected {list(expected[k])}, found {list(found[k])}" for k in misshaped]
    raise CheckpointError("\n".join(lines))


def torch_to_arrays(tensors: Mapping[str, np.ndarray], cfg: OtterConfig,
                    shapes: Mapping[str, tuple[int, ...]], source_name: str = "checkpoint",
                    rules: Sequence[Rule] | None = None) -> dict[str, np.ndarray]:
    """Torch state dict (original key names) -> our arrays keyed by dotted parameter path, after a strict check.
    `rules` defaults to the Otter HF layout."""
    rules = otter_rules(cfg) if rules is None else rules
    found = {k: (tensors.shape(k) if callable(getattr(tensors, "shape", None)) else tuple(np.shape(tensors[k])))
             for k in tensors}
    check_keys(source_name, found, expected_torch_shapes(cfg, shapes, rules))
    out = {}
    for rule in rules:
        parts = [rule.transform.to_ours(np.asarray(tensors[k])) for k in rule.torch_keys()]
        out[rule.ours] = parts[0] if rule.indices is None else np.stack(parts)
    return out


def arrays_to_torch(arrays: Mapping[str, np.ndarray], cfg: OtterConfig,
                    rules: Sequence[Rule] | None = None) -> dict[str, np.ndarray]:
    """Our arrays -> torch state dict with the original key names (default: Otter HF layout). Row blocks of a
    fused tensor (`RowPart`, e.g. open_clip's in_proj from our q/k/v) are concatenated in block order."""
    out: dict[str, np.ndarray | None] = {}
    blocks: dict[str, dict[int, np.ndarray]] = {}
    for rule in otter_rules(cfg) if rules is None else rules:
        a = np.asarray(arrays[rule.ours])
        slices = [a] if rule.indices is None else list(a)
        for key, part in zip(rule.torch_keys(), slices):
            t = rule.transform.to_theirs(part)
            if isinstance(rule.transform, RowPart):
                blocks.setdefault(key, {})[rule.transform.part] = t
                out.setdefault(key, None)
            else:
                out[key] = np.ascontiguousarray(t)
    for key, parts in blocks.items():
        out[key] = np.ascontiguousarray(np.concatenate([parts[i] for i in sorted(parts)], axis=0))
    return out


def load_torch_checkpoint(path: str, policy: Policy = Policy(), mesh=None, rules: S.Rules = S.DEFAULT_RULES,
                          tokenizer: str | None = None) -> tuple[Otter, OtterConfig]:
    """Load an Otter checkpoint directory in the original HF layout.

    With `mesh`, every parameter goes straight from the file to its shards on the mesh. Special token ids come
    from `tokenizer` (a folder), the checkpoint's tokenizer files, or the original's rule (see read_config).
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: checkpoint folder does not exist")
    cfg = read_config(path, tokenizer)
    abstract = abstract_model(cfg, policy)
    source = TensorSource(path)
    arrays = torch_to_arrays(source, cfg, param_shapes(abstract), source_name=path)
    return relayout(S.place(abstract, arrays, mesh, rules), policy.scan_layers), cfg


def save_torch_checkpoint(model: Otter, cfg: OtterConfig, out_dir: str, max_shard_bytes: int | None = None,
                          tokenizer_dir: str | None = None, dtype: str | None = None,
                          metadata: dict[str, str] | None = None) -> None:
    """Write config.json + model.safetensors (original key names) into `out_dir` (must be new or empty).

    `dtype` casts on the way out (default: keep the parameter dtype); tokenizer files are copied from
    `tokenizer_dir` when given; `metadata` goes into the safetensors header next to {"format": "pt"}."""
    tensors = arrays_to_torch(S.flat_arrays(relayout(model, True)), cfg)
    if dtype is not None:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}

    def write(tmp: str) -> None:
        save_safetensors(tensors, tmp, max_shard_bytes, metadata)
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(cfg.to_hf_dict(), fh, indent=2, sort_keys=True)
        copy_tokenizer_files(tokenizer_dir, tmp)

    atomic_dir_write(out_dir, write)


def copy_tokenizer_files(src: str | None, dst: str) -> None:
    if not src:
        return
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


__all__ = ["CheckpointError", "ConfigError", "load_torch_checkpoint", "save_torch_checkpoint", "read_config",
           "torch_to_arrays", "arrays_to_torch", "abstract_model", "param_shapes"]

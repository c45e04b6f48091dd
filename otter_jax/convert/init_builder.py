"""`otter-jax init`: an Otter starting point ("Otter-Init") from a CLIP vision tower and a base LLaMA / MPT.

The base LM's tokenizer gets `<|endofchunk|>`, `<image>`, `<answer>` (and `<PAD>` when it has no pad token), in
the order the reference constructor uses. The embeddings grow to the new vocabulary, and new rows are the mean of
the existing rows: a new token then starts as an "average" token and not as noise. When the LM's vocabulary is
already padded past the tokenizer (MPT-7B: 50432 rows), nothing is resized. Perceiver and gated cross-attention
blocks are freshly initialised with their gates at 0, so the built model computes exactly the base LM on text.
An OpenFlamingo checkpoint can be laid over them: its rows are matched to ours by token string, not by position.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np
from flax import nnx

from otter_jax import sharding as S
from otter_jax.convert import openflamingo as OF
from otter_jax.convert.otter_hf import abstract_model, param_shapes
from otter_jax.convert.torch_io import CheckpointError
from otter_jax.models import layers as L
from otter_jax.models.config import UPSTREAM_PERCEIVER, UPSTREAM_XATTN, ConfigError, OtterConfig, Policy
from otter_jax.models.cross_attention import GatedCrossAttentionBlock
from otter_jax.models.perceiver import PerceiverResampler


def _fresh_blocks(cfg: OtterConfig, policy: Policy, seed: int) -> dict[str, np.ndarray]:
    """A new perceiver and new gated blocks (gates 0), built alone so the frozen towers are never initialised."""
    rngs = nnx.Rngs(seed)
    policy = dataclasses.replace(policy, scan_layers=True)  # the key maps' layout
    with nnx.use_eager_sharding(False):
        perceiver = PerceiverResampler(cfg, policy, rngs)
        blocks = L.create_stacked(lambda r: GatedCrossAttentionBlock(cfg, policy, r), cfg.num_groups, rngs)
    out = {f"perceiver.{k}": v for k, v in S.flat_arrays(perceiver).items()}
    out.update({f"groups.gated_cross_attn.{k}": v for k, v in S.flat_arrays(blocks).items()})
    return out


def _otter_tokenizer(lm_dir: str, tokenizer: str | None, out_dir: str):
    from otter_jax.data.tokenizer import add_otter_tokens

    src = tokenizer or lm_dir
    if not OF.has_tokenizer(src):
        raise CheckpointError(f"{src}: no tokenizer files (tokenizer.json / tokenizer.model / vocab.json); "
                              f"pass the tokenizer directory")
    from transformers import AutoTokenizer

    tok = add_otter_tokens(AutoTokenizer.from_pretrained(src, local_files_only=True))
    tok.save_pretrained(out_dir)
    return tok


def _overlay_openflamingo(arrays: dict, cfg: OtterConfig, ckpt, of_cfg: OtterConfig, name: str, tok_src: str,
                          our_vocab: dict[str, int], policy: Policy) -> dict[str, set[int]]:
    """Lay an OpenFlamingo checkpoint over `arrays`; vocabulary rows are matched by token string. Returns the rows
    of each vocabulary parameter that it provided."""
    shapes = param_shapes(abstract_model(of_cfg, policy))
    of_arrays, _ = OF.checkpoint_arrays(ckpt, of_cfg, shapes, name)
    of_tok, _ = OF.openflamingo_tokenizer(tok_src)
    rows = of_cfg.text.vocab_size
    if len(of_tok) > rows:
        raise ConfigError(f"{name}: {rows} embedding rows, fewer than the {len(of_tok)} tokens of the tokenizer "
                          f"with OpenFlamingo's tokens added")
    pairs = [(i, our_vocab[t]) for t, i in of_tok.get_vocab().items() if t in our_vocab]
    pairs += [(i, i) for i in range(len(of_tok), min(rows, cfg.text.vocab_size))]  # padding rows past the tokenizer
    src, dst = (np.array(x, dtype=np.int64) for x in zip(*sorted(pairs)))
    provided = {}
    for ours, a in of_arrays.items():
        if ours not in OF.VOCAB_PARAMS:
            arrays[ours] = a
            continue
        base = np.array(arrays[ours])
        if OF.VOCAB_PARAMS[ours] == 0:
            base[dst] = a[src]
        else:
            base[:, dst] = a[:, src]
        arrays[ours] = base
        provided[ours] = set(dst.tolist())
    return provided


def build_init(vision: str, lm: str, out: str, cross_attn_every_n_layers: int | None = None,
               openflamingo: str | None = None, *, tokenizer: str | None = None,
               args: OF.FlamingoArgs = OF.FlamingoArgs(), perceiver: dict | None = None, xattn: dict | None = None,
               seed: int = 0, policy: Policy = Policy()) -> OtterConfig:
    """Build an Otter-Init checkpoint in `out` (our format + tokenizer files) and return its config.

    `vision`: HF CLIP directory or open_clip state dict. `lm`: HF LLaMA / MPT directory (config, weights, and the
    tokenizer unless `tokenizer` is given). Without `openflamingo`, the perceiver / cross-attention shapes are
    `perceiver` (depth, heads, dim_head, num_latents, ff_mult) and `xattn` (heads, dim_head, ff_mult), upstream
    defaults otherwise; with it, they are the checkpoint's. Nothing is written unless everything checks out.
    """
    from otter_jax import checkpoint

    lm_src = OF.LMSource.open(lm, need_weights=True)
    vis_src = OF.VisionSource.open(vision, args)
    with tempfile.TemporaryDirectory() as tok_dir:
        tok = _otter_tokenizer(lm, tokenizer, tok_dir)
        base_rows = lm_src.config["vocab_size"]
        vocab = max(base_rows, len(tok))
        text = dict(lm_src.config, vocab_size=vocab)
        ckpt = OF.open_checkpoint(openflamingo) if openflamingo else None
        if ckpt is not None:
            of_cfg = OF.openflamingo_config(ckpt, lm_src.config, vis_src.config, args, openflamingo,
                                            cross_attn_every_n_layers)
            if of_cfg.vision != vis_src.config:
                raise ConfigError(f"{openflamingo}: its vision tower {of_cfg.vision} differs from {vision}'s "
                                  f"{vis_src.config}")
            d = of_cfg.to_hf_dict()
            d["text_config"] = text
        else:
            p = {**UPSTREAM_PERCEIVER, **(perceiver or {})}
            x = {**UPSTREAM_XATTN, **(xattn or {})}
            unknown = sorted(set(p) - set(UPSTREAM_PERCEIVER)) + sorted(set(x) - set(UPSTREAM_XATTN))
            if unknown:
                raise ConfigError(f"unknown perceiver / cross-attention settings: {', '.join(unknown)}")
            d = {"model_type": "otter", "text_config": text, "only_attend_previous": True,
                 "tie_word_embeddings": False, "vis_dim": vis_src.config.hidden_size,
                 "cross_attn_every_n_layers": cross_attn_every_n_layers or 4,
                 **{f"perceiver_{k}": v for k, v in p.items()},
                 **{f"xattn_{k}": v for k, v in x.items()}}
        d["vision_config"] = {"model_type": "clip_vision_model", **dataclasses.asdict(vis_src.config)}
        if d["vision_config"]["proj_dim"] is None:
            del d["vision_config"]["proj_dim"]
        cfg = OtterConfig.from_hf_dict(d, source="otter-jax init")
        cfg = dataclasses.replace(cfg, tokens=OF._tokens_from_tokenizer(tok))

        abstract = abstract_model(cfg, policy)
        shapes = param_shapes(abstract)
        arrays = _fresh_blocks(cfg, policy, seed)
        arrays.update(vis_src.arrays(cfg, shapes))
        our_vocab = tok.get_vocab()
        filled = {}
        for ours, a in lm_src.arrays(cfg, policy).items():
            if ours in OF.VOCAB_PARAMS and vocab > base_rows:
                a = OF.fill_rows(a, vocab, OF.VOCAB_PARAMS[ours])
                filled[ours] = set(range(base_rows, vocab))
            arrays[ours] = a
        provided = {}
        if ckpt is not None:
            provided = _overlay_openflamingo(arrays, cfg, ckpt, of_cfg, openflamingo, tokenizer or lm, our_vocab,
                                             policy)
        names = {i: t for t, i in our_vocab.items()}
        keys = dict((r.ours, r.theirs) for r in OF.K.hf_lm_rules(cfg))
        for ours, rows in filled.items():
            rows = sorted(rows - provided.get(ours, set()))
            if rows:
                OF.warn_filled(keys[ours], rows, base_rows, names, lm, f", {openflamingo} none" if ckpt else "")
        bad = [f"{k}: {list(np.shape(arrays.get(k)))} != {list(s)}" for k, s in shapes.items()
               if k not in arrays or tuple(np.shape(arrays[k])) != tuple(s)]
        if bad:  # an internal consistency check: every source was already checked against its own layout
            raise CheckpointError("built parameters do not fit the model:\n  " + "\n  ".join(bad))
        model = S.place(abstract, arrays)
        checkpoint.save_model(model, cfg, out, tokenizer_dir=tok_dir)
    return cfg


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vision", required=True, help="HF CLIP directory or open_clip state dict (.safetensors/.pt/.bin)")
    p.add_argument("--lm", required=True, help="HF LlamaForCausalLM / MptForCausalLM directory (with tokenizer)")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist or be empty)")
    p.add_argument("--cross-attn-every", type=int, default=None, metavar="N",
                   help="a gated cross-attention block before every N-th decoder layer (default 4, or the "
                        "--openflamingo checkpoint's)")
    p.add_argument("--openflamingo", metavar="CHECKPOINT",
                   help="OpenFlamingo checkpoint (full or trainable-only) to load over the fresh blocks")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --lm)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh perceiver / cross-attention weights")
    add_shape_arguments(p)
    for prefix, defaults in (("perceiver", UPSTREAM_PERCEIVER), ("xattn", UPSTREAM_XATTN)):
        for name, default in defaults.items():
            if name != "dim_head":  # --perceiver-dim-head / --xattn-dim-head come from add_shape_arguments
                p.add_argument(f"--{prefix}-{name.replace('_', '-')}", type=int, default=None,
                               help=f"fresh {prefix} {name} (default {default})")


def add_shape_arguments(p: argparse.ArgumentParser) -> None:
    """Options for what OpenFlamingo tensor shapes do not reveal (shared with `otter-jax convert`)."""
    d = OF.FlamingoArgs()
    p.add_argument("--vision-head-width", type=int, default=d.vision_head_width,
                   help="open_clip head width (heads = width / this)")
    p.add_argument("--vision-act", choices=["quick_gelu", "gelu"], default=d.vision_act,
                   help="vision MLP activation (OpenFlamingo's ViT-L/14 ran with QuickGELU)")
    p.add_argument("--perceiver-dim-head", type=int, default=d.perceiver_dim_head)
    p.add_argument("--xattn-dim-head", type=int, default=d.xattn_dim_head)


def flamingo_args(a: argparse.Namespace) -> OF.FlamingoArgs:
    return OF.FlamingoArgs(a.vision_head_width, a.vision_act, a.perceiver_dim_head, a.xattn_dim_head)


def run(a: argparse.Namespace) -> int:
    t0 = time.time()
    perceiver, xattn = ({k: getattr(a, f"{prefix}_{k}") for k in defaults if getattr(a, f"{prefix}_{k}") is not None}
                        for prefix, defaults in (("perceiver", UPSTREAM_PERCEIVER), ("xattn", UPSTREAM_XATTN)))
    cfg = build_init(a.vision, a.lm, a.out, a.cross_attn_every, a.openflamingo, tokenizer=a.tokenizer,
                     args=flamingo_args(a), perceiver=perceiver, xattn=xattn, seed=a.seed)
    print(f"wrote {a.out}: {cfg.text_model_type} LM, vocabulary {cfg.text.vocab_size}, cross-attention before layers "
          f"{cfg.xattn_layer_indices}, tokens {cfg.tokens}; {time.time() - t0:.1f}s")
    return 0

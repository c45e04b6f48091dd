"""Text generation with Otter: media encoded once, jitted prefill + KV-cached decode loop.

    from otter_jax import generate
    out = generate.generate(model, vision_x, input_ids, attention_mask=attention_mask, max_new_tokens=8)
    out.sequences  # [B, L + new] prompt then new tokens (rows that stopped are padded)
    out.scores     # with output_scores=True: [B, new, V] float32, the processed logits that chose each new token

Decoding stops at `<|endofchunk|>` (the model's `tokens.endofchunk`) unless `eos_token_id` says otherwise;
finished rows are padded with `pad_token_id` (default: the EOS id, as HF does without a pad id).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from otter_jax import sharding as S
from otter_jax.generate.beam import beam_search
from otter_jax.generate.search import sample
from otter_jax.models.otter import Otter
from otter_jax.models.jit import module_jit


@dataclasses.dataclass
class GenerateOutput:
    sequences: np.ndarray  # [B, L + new] int32
    scores: np.ndarray | None = None  # [B, new, V] float32 (greedy / sampling)
    sequences_scores: np.ndarray | None = None  # [B] final beam scores (beam search)


@module_jit
def encode_media(model: Otter, vision_x: jax.Array) -> jax.Array:
    """Vision encoder + perceiver, once per request: [B, T, F, 3, H, W] -> [B, T, latents, D]."""
    return model.encode_vision(vision_x.astype(model.policy.dtype))[1]


def generate(model: Otter, vision_x: Any, input_ids: Any, attention_mask: Any = None, *, max_new_tokens: int = 20,
             num_beams: int = 1, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             eos_token_id: int | None = None, pad_token_id: int | None = None, mesh=None,
             rules: S.Rules = S.DEFAULT_RULES, unroll_layers: bool = True, output_scores: bool = False,
             prompt_bucket: int = 64) -> GenerateOutput:
    """Generate up to `max_new_tokens` after left-padded prompts (`attention_mask` 0 on the padding).

    Prompts are left-padded further to a multiple of `prompt_bucket` tokens, so a new prompt length reuses a
    compiled program (the extra padding is masked and removed from `sequences`; 0 disables). `output_scores` keeps
    the [B, new, V] processed logits (greedy / sampling); without it no such buffer is allocated.

    With `mesh`, the batch is split over the mesh's batch axes and the (already sharded) model runs there.
    `unroll_layers` decodes group by group instead of scanning the stacked layers (faster steps, longer compile); a
    stacked model (Policy.scan_layers=True) then has its per-group weights sliced once per call, a model loaded with
    Policy(scan_layers=False) needs no slicing at all (see `Otter.unstacked_groups`)."""
    ids = np.asarray(input_ids, np.int32)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids must be [B, L] with a matching attention_mask, got {ids.shape} and {mask.shape}")
    if model.cfg.tokens is None and eos_token_id is None:
        raise ValueError("the model has no special token ids; pass eos_token_id (and load the tokenizer)")
    eos = model.cfg.tokens.endofchunk if eos_token_id is None else eos_token_id
    pad = eos if pad_token_id is None else pad_token_id
    if max_new_tokens < 1 or num_beams < 1:
        raise ValueError("max_new_tokens and num_beams must be >= 1")
    if do_sample and num_beams > 1:
        raise ValueError("beam search with sampling is not supported; use num_beams=1 or do_sample=False")
    vision_x = np.asarray(vision_x, np.float32)
    extra = (-ids.shape[1]) % prompt_bucket if prompt_bucket > 0 else 0
    if extra:
        ids = np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad)
        mask = np.pad(mask, ((0, 0), (extra, 0)))
    args = [vision_x, ids, mask]
    if mesh is not None:
        args = [jax.device_put(a, S.batch_sharding(mesh, rules, a.ndim)) for a in args]
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        media = encode_media(model, jnp.asarray(args[0]))
        if num_beams == 1:
            seq, scores, steps = sample(model, media, args[1], args[2], max_new=max_new_tokens, do_sample=do_sample,
                                        temperature=jnp.float32(temperature), top_k=top_k,
                                        top_p=jnp.float32(top_p), seed=seed,
                                        no_repeat_ngram_size=no_repeat_ngram_size, eos=eos, pad=pad,
                                        unroll=unroll_layers, output_scores=output_scores)
            n = int(steps)
            return GenerateOutput(np.asarray(seq)[:, extra:ids.shape[1] + n],
                                  np.asarray(scores)[:, :n] if output_scores else None)
        seq, best, steps = beam_search(model, media, args[1], args[2], max_new=max_new_tokens, num_beams=num_beams,
                                       length_penalty=jnp.float32(length_penalty),
                                       no_repeat_ngram_size=no_repeat_ngram_size, eos=eos, pad=pad,
                                       unroll=unroll_layers)
        return GenerateOutput(np.asarray(seq)[:, extra:ids.shape[1] + int(steps)], sequences_scores=np.asarray(best))

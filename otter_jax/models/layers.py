"""Building blocks shared by every tower: partitioned dense/norm layers, attention, the Flamingo feed-forward,
and stacked (scanned) layers.

Every parameter is created with logical axis names (see `otter_jax.sharding` for the rules that map them onto a
mesh). Attention logits and softmax are always computed in float32: the cross-attention mask fill value
(-finfo(float32).max) does not survive a cast to bfloat16.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from otter_jax import sharding as S
from otter_jax.models.config import Policy

Axes = Sequence[str | None]

_kernel_init = nnx.initializers.normal(0.02)


def dtypes(policy: Policy) -> dict[str, Any]:
    return {"dtype": jnp.dtype(policy.dtype), "param_dtype": jnp.dtype(policy.param_dtype)}


def dense(in_features: int, out_features: int | tuple[int, ...], axes: Axes, policy: Policy, rngs: nnx.Rngs,
          use_bias: bool = False) -> nnx.Module:
    """A linear layer whose kernel is named `axes` (input axis first). A tuple `out_features` gives a kernel of
    shape (in, *out): fused projections keep their parts on a separate axis so tensor sharding never splits q from k."""
    kernel_init = nnx.with_partitioning(_kernel_init, tuple(axes))
    bias_init = nnx.with_partitioning(nnx.initializers.zeros_init(), tuple(axes[1:]))
    if isinstance(out_features, tuple):
        return nnx.LinearGeneral(in_features, out_features, use_bias=use_bias, kernel_init=kernel_init,
                                 bias_init=bias_init, rngs=rngs, **dtypes(policy))
    return nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init,
                      rngs=rngs, **dtypes(policy))


def layer_norm(dim: int, eps: float, policy: Policy, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.LayerNorm:
    # Two-pass variance, as torch computes it (flax's default E[x^2]-E[x]^2 drifts by ~1e-6).
    return nnx.LayerNorm(dim, epsilon=eps, use_bias=use_bias, use_fast_variance=False, rngs=rngs,
                         scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
                         bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)), **dtypes(policy))


def rms_norm(dim: int, eps: float, policy: Policy, rngs: nnx.Rngs) -> nnx.RMSNorm:
    return nnx.RMSNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)), **dtypes(policy))


class Embed(nnx.Embed):
    """Token embedding whose whole-sequence lookups read the table with its embedding axis gathered.

    Why: under FSDP the table is split along the embedding axis while the token ids are split along the batch; a
    plain `take` then needs an all-to-all of the looked-up activations (forward) and of their gradient (backward).
    Over a 256-chip slice XLA:TPU spends about 15% of a 7B train step's compile routing those two all-to-alls, and
    the isolated lookup compiles 3x slower with 2.6x the temporaries. Gathering the table, as FSDP does for every
    other weight before use, makes the lookup local. Single-token lookups (decode steps) keep the split table: there
    the activations are tiny and gathering the table each step would be the waste. Same parameters, same values."""

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        if out_sharding is not None or inputs.ndim < 2 or inputs.shape[-1] == 1 or S.active_mesh() is None:
            return super().__call__(inputs, out_sharding)
        (table,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
        return jnp.take(S.constrain(table, ("vocab", None)), inputs, axis=0)


def embed(num: int, features: int, policy: Policy, rngs: nnx.Rngs) -> Embed:
    """The token embedding [vocab, embed] (N(0, 0.02) initialised, as the original's)."""
    return Embed(num, features, rngs=rngs, **dtypes(policy),
                 embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")))


def param(shape: tuple[int, ...], axes: Axes, policy: Policy, rngs: nnx.Rngs,
          init: Callable = nnx.initializers.normal(1.0)) -> nnx.Param:
    value = init(rngs.params(), shape, jnp.dtype(policy.param_dtype))
    return nnx.Param(value, out_sharding=tuple(axes))


def gelu_exact(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu_exact, "silu": jax.nn.silu}

MASK_FILL = float(jnp.finfo(jnp.float32).min)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, mask: jax.Array | None = None,
           bias: jax.Array | None = None) -> jax.Array:
    """Softmax attention with grouped key/value heads.

    q: [B, Lq, H, D]; k, v: [B, Lk, KV, D] with H % KV == 0; mask: bool, broadcastable to [B, Lq, Lk] (True = keep);
    bias: float, broadcastable to [B, H, Lq, Lk]. Returns [B, Lq, H, D] in v's dtype.
    """
    b, lq, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, lq, kv, h // kv, d)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        bias = jnp.broadcast_to(bias, (bias.shape[0], h, lq, logits.shape[-1]))
        logits = logits + bias.reshape(bias.shape[0], kv, h // kv, lq, -1).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask[:, None, None], logits, MASK_FILL)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, lq, h, d)


class Visibility(NamedTuple):
    """Which keys each query may see, described per token instead of as a [B, Lq, Lk] mask.

    Key k is visible from query q iff k_slot <= q_slot (causal), the key is real (k_segment != 0) and both belong
    to the same packed episode (q_segment == k_segment); a padding query (q_segment 0) sees every real earlier key,
    as the reference's causal + key-padding mask has it. Unpacked rows use segment = attention_mask."""

    q_slot: jax.Array  # int32 [B, Lq]: sequence slot (row index), drives causality and ALiBi distances
    k_slot: jax.Array  # int32 [B, Lk]
    q_segment: jax.Array  # int32 [B, Lq]: packed episode id, 0 = padding
    k_segment: jax.Array  # int32 [B, Lk]

    @classmethod
    def causal(cls, segment_ids: jax.Array) -> "Visibility":
        slots = jnp.broadcast_to(jnp.arange(segment_ids.shape[-1], dtype=jnp.int32), segment_ids.shape)
        seg = segment_ids.astype(jnp.int32)
        return cls(slots, slots, seg, seg)

    def block(self, q_slot: jax.Array, q_segment: jax.Array) -> jax.Array:
        """bool [B, lq, Lk] for a block of queries."""
        same = (q_segment[:, :, None] == self.k_segment[:, None, :]) | (q_segment[:, :, None] == 0)
        return (self.k_slot[:, None, :] <= q_slot[:, :, None]) & (self.k_segment[:, None, :] != 0) & same

    def dense(self) -> jax.Array:
        return self.block(self.q_slot, self.q_segment)


ATTENTION_IMPLS = ("dense", "chunked", "fused", "splash")


def alibi_block(slopes: jax.Array, q_slot: jax.Array, k_slot: jax.Array) -> jax.Array:
    """float32 [B, H, lq, Lk]: slope * (key slot - query slot), MPT's bias in the form that holds for any block."""
    rel = (k_slot[:, None, :] - q_slot[:, :, None]).astype(jnp.float32)
    return slopes[None, :, None, None] * rel[:, None]


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array, vis: Visibility, *, scale: float,
                   slopes: jax.Array | None = None, impl: str = "dense", chunk: int = 512) -> jax.Array:
    """Attention over a whole sequence (training, scoring, the forward pass), mask and ALiBi built from `vis`.

    impl "dense": the reference computation (float32 [B, H, Lq, Lk] logits, probabilities and bias).
    impl "chunked": the same arithmetic one block of `chunk` queries at a time, each block rematerialised in the
    backward pass, so no [B, H, Lq, Lk] array is ever whole: peak attention memory is [B, H, chunk, Lk]; any platform.
    impl "fused": `jax.nn.dot_product_attention` (cuDNN's fused kernel on GPU, XLA elsewhere), with ALiBi in MPT's
    own key-only form slope * (k - (Lk - 1)) ([1, H, 1, Lk], equal under softmax) and a bool [B, 1, Lq, Lk] mask.
    impl "splash": the Pallas splash-attention kernel when compiling for TPU (`splash_attention`, blocks of
    `chunk`), "chunked" elsewhere; no ALiBi, so LLaMA only.
    """
    if impl == "dense" or (impl == "chunked" and q.shape[1] <= chunk):
        bias = None if slopes is None else alibi_block(slopes, vis.q_slot, vis.k_slot)
        return attend(q, k, v, scale=scale, mask=vis.dense(), bias=bias)
    if impl == "fused":
        bias = None
        if slopes is not None:
            key = (jnp.arange(k.shape[1], dtype=jnp.float32) - (k.shape[1] - 1))
            bias = (slopes[:, None] * key[None])[None, :, None, :].astype(q.dtype)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=vis.dense()[:, None], scale=scale)
    if impl == "splash":
        if slopes is not None:
            raise ValueError("Policy.attention='splash' has no ALiBi (MPT): use 'chunked' or 'fused'")
        if _compiling_for_tpu():
            return splash_attention(q, k, v, vis.q_segment, scale=scale, block=chunk)
        impl = "chunked"  # no Pallas TPU kernel elsewhere: the same arithmetic in XLA blocks
        if q.shape[1] <= chunk:
            return attend(q, k, v, scale=scale, mask=vis.dense())
    if impl != "chunked":
        raise ValueError(f"Policy.attention={impl!r}: use one of {ATTENTION_IMPLS}")
    b, lq, h, d = q.shape
    if lq % chunk:
        raise ValueError(f"Policy.attention_chunk={chunk} does not divide the sequence length {lq}")
    n = lq // chunk

    def blocks(x):  # [B, Lq, ...] -> [n, B, chunk, ...]
        return x.reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)

    @jax.checkpoint
    def one(qb, q_slot, q_seg):
        bias = None if slopes is None else alibi_block(slopes, q_slot, vis.k_slot)
        return attend(qb, k, v, scale=scale, mask=vis.block(q_slot, q_seg), bias=bias)

    out = jax.lax.map(lambda xs: one(*xs), (blocks(q), blocks(vis.q_slot), blocks(vis.q_segment)))
    return out.swapaxes(0, 1).reshape(b, lq, h, d)


def _compiling_for_tpu() -> bool:
    """Whether the program being traced targets TPU: the active mesh's devices (compile-only TPU devices of an
    ahead-of-time plan included), else the default backend."""
    mesh = S.active_mesh()
    return (mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()) == "tpu"


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, scale: float,
                     block: int = 512, interpret: bool = False) -> jax.Array:
    """Causal self-attention through the Pallas splash-attention TPU kernel (online softmax in VMEM: neither the
    [H, L, L] scores nor a mask ever reach HBM, and fully masked blocks are skipped).

    q: [B, L, H, D], k/v: [B, L, KV, D] (grouped heads), segment_ids: int [B, L] (packed episode, 0 = padding).
    A query sees earlier keys of its own segment. Real tokens therefore see exactly what `Visibility.causal` lets
    them see; padding queries see earlier padding only (their outputs are ignored, the reference lets them see
    real keys). Rows are whole sequences (slot = index). Under `sharding.activation_sharding` the kernel runs per
    shard (batch over the batch axes, heads over "heads"), as a custom call must. `interpret=True` runs the
    kernel's own Pallas program on any backend (tests)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    length = q.shape[1]
    bq = min(block, length)
    if length % bq:
        raise ValueError(f"splash attention: block {bq} does not divide the sequence length {length}")

    def local(q, k, v, seg):  # one shard: [b, L, h, D] -> kernel layout [h, L, D] per row
        heads = q.shape[2]
        mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
        sizes = sk.BlockSizes(block_q=bq, block_kv=bq, block_kv_compute=bq, block_q_dkv=bq, block_kv_dkv=bq,
                              block_kv_dkv_compute=bq, block_q_dq=bq, block_kv_dq=bq)
        kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        qt, kt, vt = ((x * scale if x is q else x).swapaxes(1, 2) for x in (q, k, v))
        seg = seg.astype(jnp.int32)
        out = jax.vmap(lambda a, b_, c, s: kernel(a, b_, c, segment_ids=sk.SegmentIds(s, s)))(qt, kt, vt, seg)
        return out.swapaxes(1, 2).astype(v.dtype)

    mesh = S.active_mesh()
    if mesh is None:
        return local(q, k, v, segment_ids)
    qs = S.logical_spec(("batch", None, "heads", None), q.shape)
    ks = S.logical_spec(("batch", None, "kv_heads", None), k.shape)
    ss = S.logical_spec(("batch", None), segment_ids.shape)
    return jax.shard_map(local, mesh=mesh, in_specs=(qs, ks, ks, ss), out_specs=qs, check_vma=False)(
        q, k, v, segment_ids)


class KVCache(NamedTuple):
    """One decoder layer's cached keys and values, [B, S, KV, D] each (S = prompt + new tokens)."""

    k: jax.Array
    v: jax.Array


def update_cache(cache: KVCache | None, k: jax.Array, v: jax.Array, index: jax.Array | None
                 ) -> tuple[jax.Array, jax.Array, KVCache | None]:
    """Write the new keys/values at slot `index`; return the keys/values to attend over and the new cache.
    Without a cache, attend over the new keys/values only (the plain forward pass)."""
    if cache is None:
        return k, v, None
    k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), index, axis=1)
    v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), index, axis=1)
    return k_all, v_all, KVCache(k_all, v_all)


class FeedForward(nnx.Module):
    """Flamingo feed-forward: LayerNorm -> Linear (no bias) -> exact GELU -> Linear (no bias).

    Used by the perceiver and the gated cross-attention block (torch names `feed_forward.{0,1,3}`)."""

    def __init__(self, dim: int, mult: int, policy: Policy, rngs: nnx.Rngs):
        self.norm = layer_norm(dim, 1e-5, policy, rngs)
        self.fc1 = dense(dim, dim * mult, ("embed", "mlp"), policy, rngs)
        self.fc2 = dense(dim * mult, dim, ("mlp", "embed"), policy, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu_exact(self.fc1(self.norm(x))))


def create_stacked(factory: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs, stacked: bool = True
                   ) -> nnx.Module:
    """n copies of a module with parameters stacked on a leading "layers" axis, for `scan`; with stacked=False an
    `nnx.List` of n separate modules (Policy.scan_layers), which `scan` runs one after another."""
    if not stacked:
        return nnx.List([factory(rngs) for _ in range(n)])  # each draws fresh keys from the shared streams

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(r: nnx.Rngs) -> nnx.Module:
        return factory(r)

    return make(rngs)


LAYER_INPUT = "layer_input"  # checkpoint name of every decoder layer's / gated block's input in training


def remat_policy(name: str) -> Callable | None:
    if name in ("full", "nothing_saveable"):
        return jax.checkpoint_policies.nothing_saveable
    if name == "offload_layer_inputs":  # keep the named layer inputs in host memory, recompute everything else
        return jax.checkpoint_policies.save_and_offload_only_these_names(
            names_which_can_be_saved=[], names_which_can_be_offloaded=[LAYER_INPUT], offload_src="device",
            offload_dst="pinned_host")
    try:
        return getattr(jax.checkpoint_policies, name)
    except AttributeError:
        raise ValueError(f"unknown remat policy {name!r}; use 'none', 'full' or a jax.checkpoint_policies name")


def checkpointed(fn: Callable, remat: str) -> Callable:
    """`fn` rematerialised under the named policy (its inputs saved, the rest recomputed in the backward pass)."""
    return fn if remat == "none" else nnx.remat(fn, policy=remat_policy(remat), prevent_cse=False)


def scan(stacked: nnx.Module, carry: Any, body: Callable[..., tuple[Any, Any]], remat: str = "none",
         xs: Any = None) -> tuple[Any, Any]:
    """Run `body(layer, carry[, x]) -> (carry, y)` over the stacked layers (and the leading axis of `xs`, e.g.
    per-layer caches); compile time does not grow with depth. An `nnx.List` of layers (from
    `create_stacked(..., stacked=False)`) runs unrolled, with the same results and the ys stacked the same way."""
    if isinstance(stacked, nnx.List):
        return _unrolled(stacked, carry, body, remat, xs)
    if xs is None:
        def step(c, layer):
            return body(layer, c)
    else:
        def step(c, layer, x):
            return body(layer, c, x)

    if remat != "none":
        step = nnx.remat(step, policy=remat_policy(remat), prevent_cse=False)
    in_axes = (nnx.Carry, 0) if xs is None else (nnx.Carry, 0, 0)
    scanned = nnx.scan(step, in_axes=in_axes, out_axes=(nnx.Carry, 0),
                       transform_metadata={nnx.PARTITION_NAME: "layers"})
    return scanned(carry, stacked) if xs is None else scanned(carry, stacked, xs)


def _unrolled(layers: nnx.List, carry: Any, body: Callable, remat: str, xs: Any) -> tuple[Any, Any]:
    call = body if remat == "none" else nnx.remat(body, policy=remat_policy(remat), prevent_cse=False)
    ys = []
    for i, layer in enumerate(layers):
        if xs is None:
            carry, y = call(layer, carry)
        else:
            carry, y = call(layer, carry, jax.tree.map(lambda a, i=i: a[i], xs))
        ys.append(y)
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)

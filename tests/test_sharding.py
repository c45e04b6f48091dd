"""The forward pass on a (data=2, fsdp=2, tensor=2) mesh of 8 simulated devices equals the single-device one."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from golden_helpers import golden_case, golden_dir
from otter_jax import convert
from otter_jax import sharding as S
from otter_jax.models import Otter, Policy


@nnx.jit
def _forward(model, vision_x, input_ids, attention_mask):
    return model(vision_x, input_ids, attention_mask=attention_mask).logits


@pytest.mark.parametrize("name", ["otter_llama_tiny", "otter_mpt_tiny"])
def test_mesh_forward_equals_single_device(golden_model, name):
    assert jax.device_count() == 8
    model, _ = golden_model(name)
    inputs, _ = golden_case(name, "image")
    # Batch 4 (the fixture rows twice) so that data x fsdp = 4 ways split it.
    inputs = {k: np.concatenate([v, v[::-1]]) for k, v in inputs.items()}
    single = np.asarray(_forward(model, inputs["vision_x"], inputs["input_ids"], inputs["attention_mask"]))

    mesh = S.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, _ = convert.load_torch_checkpoint(str(golden_dir(name)), mesh=mesh)
    emb = sharded.embed_tokens.embedding[...]
    assert emb.sharding.spec == P("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (emb.shape[0] // 2, emb.shape[1] // 2)
    wq = sharded.groups.layers[0].self_attn.q_proj.kernel[...] if name.startswith("otter_llama") else \
        sharded.groups.layers[0].attn.Wqkv.kernel[...]
    assert wq.sharding.spec[0] is None and "fsdp" in wq.sharding.spec and "tensor" in wq.sharding.spec
    assert len({d for d in wq.sharding.device_set}) == 8

    batch = S.batch_sharding(mesh)
    put = lambda x, nd: jax.device_put(x, S.batch_sharding(mesh, ndim=nd))  # noqa: E731
    with jax.set_mesh(mesh):
        out = _forward(sharded, put(inputs["vision_x"], 6), put(inputs["input_ids"], 2),
                       put(inputs["attention_mask"], 2))
    assert batch.spec == P(("data", "fsdp"), None)
    assert np.abs(np.asarray(out) - single).max() <= 1e-5


def test_create_sharded_never_materialises_whole(golden_model):
    """Random init straight into shards: each device holds only its slice of the big matrices."""
    _, cfg = golden_model("otter_llama_tiny")
    mesh = S.make_mesh(data=2, fsdp=2, tensor=2)
    model = S.create_sharded(lambda: Otter(cfg, Policy(), rngs=nnx.Rngs(0)), mesh)
    k = model.groups.layers[0].mlp.up_proj.kernel[...]
    assert k.shape == (cfg.num_groups, 64, 160)
    assert k.sharding.spec == P(None, "fsdp", "tensor")
    assert k.addressable_shards[0].data.shape == (cfg.num_groups, 32, 80)
    # Gates start at zero (upstream init); the perceiver latents are replicated along the non-embed axis.
    assert float(np.abs(np.asarray(model.groups.gated_cross_attn.attn_gate[...])).max()) == 0.0


def test_indivisible_dims_are_replicated():
    mesh = S.make_mesh(data=1, fsdp=1, tensor=8)
    assert S.logical_to_spec(("vocab", "embed"), (32000, 4096), mesh, S.DEFAULT_RULES) == P("tensor", None)
    # 32004 % 8 == 4: the vocabulary stays whole rather than failing.
    assert S.logical_to_spec(("vocab", "embed"), (32004, 4096), mesh, S.DEFAULT_RULES) == P(None, None)
    mesh = S.make_mesh(data=1, fsdp=2, tensor=4)
    assert S.logical_to_spec(("embed", "embed"), (8, 8), mesh, S.DEFAULT_RULES) == P("fsdp", None)


def test_batch_shards_follow_the_batch_rule():
    """What media compaction (Policy.media_budget) gathers per shard: "batch" maps to data x fsdp by default."""
    mesh = S.make_mesh(data=2, fsdp=2, tensor=2)
    assert S.batch_shards(8) == 1  # outside activation_sharding nothing is split
    with S.activation_sharding(mesh):
        assert S.batch_shards(8) == 4
        assert S.batch_shards(6) == 1  # not divisible by 4: the batch is replicated, one shard


def test_sequence_embedding_lookup_gathers_the_table_instead_of_an_all_to_all():
    """layers.Embed under an FSDP mesh: the whole-sequence lookup and its gradient equal nnx.Embed's exactly, and the
    compiled step gathers the fsdp-split table instead of moving the looked-up activations with an all-to-all."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from otter_jax.models import layers as L

    mesh = S.make_mesh(data=1, fsdp=8, tensor=1)
    with nnx.use_eager_sharding(False):
        ours = L.embed(64, 32, Policy(), nnx.Rngs(0))
    plain = nnx.Embed(64, 32, rngs=nnx.Rngs(1))
    table = jax.device_put(ours.embedding[...], NamedSharding(mesh, P(None, "fsdp")))
    ids = jax.device_put(jax.random.randint(jax.random.key(1), (8, 16), 0, 64), S.batch_sharding(mesh))

    def compiled(module, ids):
        graphdef, state = nnx.split(module)

        def loss(table, ids):
            state["embedding"] = state["embedding"].replace(table)
            with S.activation_sharding(mesh):
                x = jax.lax.with_sharding_constraint(nnx.merge(graphdef, state)(ids), S.batch_sharding(mesh, ndim=3))
            return jnp.sum(x * jnp.arange(32.0))

        step = jax.jit(jax.value_and_grad(loss))
        hlo = step.lower(table, ids).compile().as_text()
        return step(table, ids), hlo.count("all-to-all("), hlo.count("all-gather(")

    (loss_ours, grad_ours), to_all_ours, gathers_ours = compiled(ours, ids)
    (loss_plain, grad_plain), to_all_plain, _ = compiled(plain, ids)
    assert (to_all_plain, to_all_ours) == (1, 0) and gathers_ours >= 1
    assert float(loss_ours) == float(loss_plain)
    assert np.array_equal(np.asarray(grad_ours), np.asarray(grad_plain))
    # A decode step's single-token lookup compiles as nnx.Embed's does (no per-token gather of the whole table).
    assert compiled(ours, ids[:, :1])[1:] == compiled(plain, ids[:, :1])[1:]

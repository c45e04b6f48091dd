"""Flax NNX modules of Otter: CLIP vision encoder, perceiver resampler, gated cross-attention, LLaMA/MPT decoders."""
from otter_jax.models.config import OtterConfig, Policy, SpecialTokens  # noqa: F401
from otter_jax.models.otter import Otter, OtterOutput, causal_lm_loss  # noqa: F401

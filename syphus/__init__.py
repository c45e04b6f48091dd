"""Syphus: LLM-driven multimodal instruction-response generation (MIMIC-IT and MM-Instruct recipes).

Pure Python, no JAX: annotations -> prompts -> any OpenAI-compatible endpoint -> journaled answers ->
MIMIC-IT JSON / parquet and TFRecords in the schema of `syphus.schema`, which the otter_jax loader reads.
"""

__version__ = "0.1.0"

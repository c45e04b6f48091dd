"""MIMIC-IT data: upstream readers -> ArrayRecord episode store (TFDS) -> Grain loader of device-ready batches.

Modules, in data-flow order: `mimicit` (upstream file formats), `ingest` (resumable conversion), `store` (TFDS
builders and the random-access reader), `images` (decode/resize/normalise), `tokenizer`, `episodes` (prompt text,
ids, labels, media layout), `loader` (grain pipeline, host sharding, global arrays), `demo` (bundled demo data).
"""

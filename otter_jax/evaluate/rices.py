"""RICES features from a CLIP checkpoint's image embeddings, as OpenFlamingo computes them, cached per image.

OpenFlamingo's RICES ranks demonstrations by cosine similarity of CLIP *image embeddings*: the pooled output
(post_layernorm of the CLS token) through the visual projection, L2-normalised. The evaluated model's own encoder
gives only patch tokens (Otter never applies post_layernorm/projection), so reproducing published few-shot numbers
needs a CLIP folder (HF `CLIPModel` / `CLIPVisionModelWithProjection`: config.json + weights). Embeddings are cached
per image on disk (one .npy per image key under a folder named by the checkpoint and preprocessing), since a query
set of thousands of images is embedded again for every seed, shot count and rerun otherwise.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Sequence

import numpy as np

from otter_jax.evaluate.example import DataError


def _digest(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


class ClipImageEmbedder:
    """`features(keys, read_image)` -> [N, proj_dim] L2-normalised CLIP image embeddings."""

    def __init__(self, folder: str, batch_size: int = 32, resize: str = "squash", cache_dir: str | None = None):
        import dataclasses

        import jax
        import jax.numpy as jnp
        from flax import nnx

        from otter_jax import sharding as S
        from otter_jax.convert.openflamingo import VisionSource
        from otter_jax.convert.otter_hf import param_shapes, torch_to_arrays
        from otter_jax.convert.torch_io import CheckpointError
        from otter_jax.models.config import Policy
        from otter_jax.models.vision import CLIPVisionEncoder

        src = VisionSource.open(folder)
        if src.layout != "hf_clip":
            raise CheckpointError(f"{folder}: RICES needs an HF CLIP folder (config.json + weights)")
        if not src.config.proj_dim:
            raise CheckpointError(f"{folder}: no visual_projection weight; RICES embeddings are the projected pooled "
                                  "output (use a CLIPModel or CLIPVisionModelWithProjection checkpoint)")
        policy = Policy(dtype="float32", param_dtype="float32", scan_layers=True)
        vcfg = src.config

        class Holder(nnx.Module):   # our rule names are "vision_encoder.*"
            def __init__(self, rngs):
                with nnx.use_eager_sharding(False):   # shardings are applied by S.place, as for the model
                    self.vision_encoder = CLIPVisionEncoder(vcfg, policy, rngs)

        abstract = nnx.eval_shape(lambda: Holder(nnx.Rngs(0)))
        arrays = torch_to_arrays(src.tensors, None, param_shapes(abstract), source_name=folder, rules=src.rules())
        self.encoder = S.place(abstract, arrays, None, S.DEFAULT_RULES).vision_encoder
        self.image_size, self.batch_size, self.resize = vcfg.image_size, batch_size, resize
        graphdef, state = nnx.split(self.encoder)

        @jax.jit
        def embed(state, pixels):
            enc = nnx.merge(graphdef, state)
            hidden = enc(pixels)
            pooled = enc.post_layernorm(hidden[:, 0])
            f = enc.visual_projection(pooled).astype(jnp.float32)
            return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)

        self._embed = lambda pixels: np.asarray(embed(state, pixels))
        tag = _digest(os.path.abspath(folder), str(dataclasses.asdict(vcfg)), resize, _weights_stamp(folder))
        self.cache_dir = os.path.join(cache_dir, tag[:16]) if cache_dir else None
        self.computed = 0   # embeddings computed (not read from the cache), for tests and logs

    def _path(self, key: str) -> str | None:
        return os.path.join(self.cache_dir, _digest(key) + ".npy") if self.cache_dir else None

    def features(self, keys: Sequence[str], read_image: Callable[[str], bytes]) -> np.ndarray:
        from otter_jax.data.images import decode_resize, normalize_host

        out: dict[str, np.ndarray] = {}
        todo = []
        for k in dict.fromkeys(keys):
            p = self._path(k)
            if p and os.path.exists(p):
                out[k] = np.load(p)
            else:
                todo.append(k)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            pix = np.zeros((self.batch_size, 3, self.image_size, self.image_size), np.float32)
            for i, k in enumerate(chunk):
                try:
                    pix[i] = normalize_host(decode_resize(read_image(k), self.image_size, self.resize))
                except (OSError, ValueError) as e:
                    raise DataError(f"cannot decode image {k}: {e}") from None
            emb = self._embed(pix)[:len(chunk)]
            self.computed += len(chunk)
            for k, e in zip(chunk, emb):
                out[k] = e
                if self.cache_dir:
                    os.makedirs(self.cache_dir, exist_ok=True)
                    tmp = self._path(k) + ".tmp.npy"
                    np.save(tmp, e)
                    os.replace(tmp, self._path(k))
        return np.stack([out[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


def _weights_stamp(folder: str) -> str:
    """Names, sizes and mtimes of the weight files: a changed checkpoint must not reuse old embeddings."""
    items = []
    for name in sorted(os.listdir(folder)):
        if name.endswith((".safetensors", ".bin", ".json")):
            st = os.stat(os.path.join(folder, name))
            items.append(f"{name}:{st.st_size}:{int(st.st_mtime)}")
    return ";".join(items)

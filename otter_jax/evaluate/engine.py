"""The model side of evaluation: batched, length-bucketed, optionally sharded generation, option log-likelihoods and
image features, on prompts given as (text, image keys).

Why buckets: every distinct (batch, length, media) shape compiles the decode loop again; padding prompts to a
multiple of `length_bucket` and every batch to `batch_size` rows keeps a whole evaluation on a few compiled shapes.
Generation prompts are left-padded (as `generate` expects); scored sequences are right-padded so positions start at
0 like the training forward pass.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from otter_jax import generate as G
from otter_jax import sharding as S
from otter_jax.data.images import decode_resize, normalize_host
from otter_jax.evaluate.example import DataError
from otter_jax.models.jit import module_jit

Prompt = tuple[str, tuple[str, ...]]  # (text with one <image> per key, image keys)
ReadImage = Callable[[str], bytes]


@module_jit
def sequence_logprob(model, vision_x, ids, mask, target):
    """Sum over positions with target=1 of log p(ids[t] | ids[<t], images): [B] float32."""
    logits = model(vision_x, ids, attention_mask=mask).logits
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(target[:, 1:] != 0, tok, 0.0), axis=-1)


@module_jit
def image_features(model, pixels):
    """[N, 3, H, W] -> L2-normalised mean of the CLIP encoder's last-layer patch tokens [N, D] (RICES features)."""
    hidden = model.vision_encoder(pixels.astype(model.policy.dtype))
    f = hidden[:, 1:].astype(jnp.float32).mean(axis=1)
    return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


class Engine:
    def __init__(self, model, tokenizer, *, batch_size: int = 8, mesh=None, rules: S.Rules = S.DEFAULT_RULES,
                 resize: str = "squash", length_bucket: int = 32, image_cache: int = 1024):
        if model.cfg.tokens is None:
            raise ValueError("the model has no special token ids; load it with its tokenizer")
        self.model, self.tok, self.mesh, self.rules = model, tokenizer, mesh, rules
        self.tokens = model.cfg.tokens
        self.pad = self.tokens.pad if self.tokens.pad is not None else self.tokens.endofchunk
        shards = 1
        if mesh is not None:
            spec = S.batch_sharding(mesh, rules, 2).spec[0]
            axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
            shards = math.prod(mesh.shape[a] for a in axes)
        self.batch_size = -(-batch_size // shards) * shards  # a multiple of the batch shards
        self.image_size = model.cfg.vision.image_size
        self.resize, self.length_bucket = resize, length_bucket
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = image_cache

    # ---------------------------------------------------------------------------------------------- inputs
    def encode(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ([self.tokens.bos] if self.tokens.bos is not None else []) + list(ids)

    def pixels(self, key: str, read_image: ReadImage) -> np.ndarray:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        data = read_image(key)
        try:
            arr = normalize_host(decode_resize(data, self.image_size, self.resize))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot decode image {key}: {e}") from None
        self._cache[key] = arr
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return arr

    def vision_batch(self, rows: Sequence[tuple[str, ...]], read_image: ReadImage) -> np.ndarray:
        """[B, T, 1, 3, S, S] with T = most images in a row (>= 1); missing media are zeros (never attended:
        a token only sees the media of the last `<image>` before it)."""
        t = max([1] + [len(r) for r in rows])
        s = self.image_size
        out = np.zeros((self.batch_size, t, 1, 3, s, s), np.float32)
        for i, keys in enumerate(rows):
            for j, key in enumerate(keys):
                out[i, j, 0] = self.pixels(key, read_image)
        return out

    def _bucket(self, n: int) -> int:
        return -(-n // self.length_bucket) * self.length_bucket

    def _check(self, prompts: Sequence[Prompt]) -> None:
        if not 0 < len(prompts) <= self.batch_size:
            raise ValueError(f"a batch holds 1..{self.batch_size} prompts, got {len(prompts)}")

    def _place(self, *arrays):
        if self.mesh is None:
            return [jnp.asarray(a) for a in arrays]
        return [jax.device_put(a, S.batch_sharding(self.mesh, self.rules, a.ndim)) for a in arrays]

    def _mesh_ctx(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    # ---------------------------------------------------------------------------------------------- work
    def generate(self, prompts: Sequence[Prompt], read_image: ReadImage, **gen) -> list[str]:
        """Answers (text after the prompt, cut at `<|endofchunk|>` / eos, special tokens dropped)."""
        self._check(prompts)
        encoded = [self.encode(text) for text, _ in prompts]
        length = self._bucket(max(len(e) for e in encoded))
        ids = np.full((self.batch_size, length), self.pad, np.int32)
        mask = np.zeros((self.batch_size, length), np.int32)
        for i in range(self.batch_size):
            e = encoded[i] if i < len(encoded) else encoded[0]  # filler rows repeat row 0
            ids[i, length - len(e):] = e
            mask[i, length - len(e):] = 1
        rows = [keys for _, keys in prompts] + [prompts[0][1]] * (self.batch_size - len(prompts))
        vision = self.vision_batch(rows, read_image)
        out = G.generate(self.model, vision, ids, attention_mask=mask, mesh=self.mesh, rules=self.rules, **gen)
        stops = {self.tokens.endofchunk, self.tokens.eos}
        answers = []
        for row in np.asarray(out.sequences)[:len(prompts), length:]:
            new = []
            for t in row.tolist():
                if t in stops:
                    break
                new.append(t)
            answers.append(self.tok.decode(new, skip_special_tokens=True).strip())
        return answers

    def option_logprobs(self, prompts: Sequence[Prompt], options: Sequence[Sequence[str]], read_image: ReadImage
                        ) -> list[list[tuple[float, int]]]:
        """Per prompt, per option: (sum of log-probs of the option's tokens after the prompt, token count)."""
        rows = []  # (prompt index, ids, n option tokens)
        for p, ((text, _), opts) in enumerate(zip(prompts, options)):
            base = self.encode(text)
            for o in opts:
                oid = list(self.tok(o, add_special_tokens=False)["input_ids"])
                if not oid:
                    raise ValueError(f"option {o!r} tokenises to nothing")
                rows.append((p, base + oid, len(oid)))
        scores = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            length = self._bucket(max(len(r[1]) for r in chunk))
            ids = np.full((self.batch_size, length), self.pad, np.int32)
            mask = np.zeros_like(ids)
            target = np.zeros_like(ids)
            for i, (_, seq, n) in enumerate(chunk):
                ids[i, :len(seq)] = seq
                mask[i, :len(seq)] = 1
                target[i, len(seq) - n:len(seq)] = 1
            vision = self.vision_batch([prompts[r[0]][1] for r in chunk], read_image)
            with self._mesh_ctx():
                v, i_, m, t = self._place(vision, ids, mask, target)
                out = np.asarray(sequence_logprob(self.model, v, i_, m, t))
            scores += out[:len(chunk)].tolist()
        result: list[list[tuple[float, int]]] = [[] for _ in prompts]
        for (p, _, n), s in zip(rows, scores):
            result[p].append((float(s), n))
        return result

    def features(self, keys: Sequence[str], read_image: ReadImage) -> np.ndarray:
        """RICES features [len(keys), D] (see image_features)."""
        out = []
        for start in range(0, len(keys), self.batch_size):
            chunk = list(keys[start:start + self.batch_size])
            pix = np.zeros((self.batch_size, 3, self.image_size, self.image_size), np.float32)
            for i, k in enumerate(chunk):
                pix[i] = self.pixels(k, read_image)
            with self._mesh_ctx():
                (p,) = self._place(pix)
                out.append(np.asarray(image_features(self.model, p))[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

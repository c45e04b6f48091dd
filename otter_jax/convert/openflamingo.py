"""OpenFlamingo checkpoints <-> our model.

OpenFlamingo ships weights in two forms: the full `Flamingo.state_dict()` (open_clip vision tower, perceiver,
language model with wrapped layers, and alias keys that list the same tensors twice), and the training checkpoint,
which holds only the trainable parameters and the input embeddings. The training checkpoint goes on top of a vision
tower (open_clip state dict or HF CLIP directory) and a base LM directory. Both forms are read into one `Otter`.
Every file involved is checked strictly (unknown keys, wrong shapes, unequal aliases, uncovered parameters), and
both forms can be written back bit for bit.

Tensor shapes fix most of the architecture. What they leave open comes from `FlamingoArgs` (head sizes, vision
activation) and from the LM directory's config.json (the LM hyperparameters).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from typing import Iterator, Mapping

import numpy as np

from otter_jax import sharding as S
from otter_jax.convert import keymaps as K
from otter_jax.convert.otter_hf import (abstract_model, arrays_to_torch, check_keys, expected_torch_shapes,
                                        param_shapes, torch_to_arrays)
from otter_jax.convert.torch_io import CheckpointError, TensorSource
from otter_jax.models.config import (SUPPORTED_TEXT_MODELS, ConfigError, OtterConfig, Policy, SpecialTokens,
                                     VisionConfig)
from otter_jax.models.layout import relayout
from otter_jax.models.otter import Otter

ENDOFCHUNK, MEDIA, ANSWER, PAD = "<|endofchunk|>", "<image>", "<answer>", "<PAD>"
OPENFLAMINGO_TOKENS = (ENDOFCHUNK, MEDIA)  # what OpenFlamingo's factory adds (then <PAD> if there is no pad token)
# Keys of a full HF CLIPModel / open_clip CLIP that belong to the text tower and are not part of a vision encoder.
_CLIP_TEXT_KEYS = re.compile(r"^(text_model\.|text_projection|logit_scale|token_embedding|ln_final|transformer\.|"
                             r"positional_embedding$|attn_mask$)")


@dataclasses.dataclass(frozen=True)
class FlamingoArgs:
    """OpenFlamingo constructor arguments that no tensor shape reveals. Defaults are OpenFlamingo's (ViT-L/14 with
    64-wide heads, run with QuickGELU as open_clip <= 2.22 did; perceiver and cross-attention heads of 64)."""

    vision_head_width: int = 64
    vision_act: str = "quick_gelu"
    perceiver_dim_head: int = 64
    xattn_dim_head: int = 64


# ------------------------------------------------------------------------------------------------ sources
class KeyView(Mapping[str, np.ndarray]):
    """A lazily read tensor file seen through a key renaming (e.g. without `module.` prefixes)."""

    def __init__(self, source: TensorSource, names: dict[str, str], name: str):
        self.source, self.names, self.name = source, names, name  # names: our key -> key in the file

    @classmethod
    def open(cls, path: str, strip: tuple[str, ...] = ("module.",), keep=None) -> "KeyView":
        """Open `path`, drop leading `strip` prefixes (DDP's `module.`), keep only keys for which `keep(key)`."""
        source = TensorSource(path)
        names: dict[str, str] = {}
        for key in source:
            new = key
            while new.startswith(strip):
                new = new[len(next(p for p in strip if new.startswith(p))):]
            if keep is not None and not keep(new):
                continue
            if new in names:
                raise CheckpointError(f"{path}: keys {names[new]!r} and {key!r} are the same after removing "
                                      f"the {', '.join(strip)} prefix")
            names[new] = key
        return cls(source, names, path)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.source.shape(self.names[key])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.source[self.names[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _read_json(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


def read_lm_config(lm_dir: str) -> dict:
    """The HF config.json of a base LLaMA / MPT directory, normalised to what `OtterConfig.from_hf_dict` reads."""
    if not lm_dir or not os.path.isdir(lm_dir):
        raise CheckpointError(f"language model directory {lm_dir!r} does not exist")
    path = os.path.join(lm_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{lm_dir}: no config.json (expected an HF LlamaForCausalLM / MptForCausalLM directory)")
    d = _read_json(path)
    if d.get("model_type") not in SUPPORTED_TEXT_MODELS:
        raise ConfigError(f"{path}: model_type={d.get('model_type')!r} is not a supported language model "
                          f"(supported: {', '.join(SUPPORTED_TEXT_MODELS)})")
    d = dict(d)
    rope = d.pop("rope_parameters", None)  # transformers >= 5 keeps rope_theta here
    if rope:
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"{path}: rope_parameters.rope_type={rope['rope_type']!r} is not supported")
        d.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    if d["model_type"] == "mpt" and "layer_norm_epsilon" in d:  # HF MptConfig's spelling
        d.setdefault("layer_norm_eps", d["layer_norm_epsilon"])
    if d["model_type"] == "mpt" and "MptForCausalLM" in (d.get("architectures") or []):
        d["expansion_ratio"] = 4  # HF's MptForCausalLM builds a 4x MLP whatever expansion_ratio says
    return d


@dataclasses.dataclass
class LMSource:
    """A base LM directory: its config and (when present) its weights in HF naming."""

    path: str
    config: dict
    tensors: KeyView | None

    @classmethod
    def open(cls, lm_dir: str, need_weights: bool) -> "LMSource":
        config = read_lm_config(lm_dir)
        try:
            tensors = KeyView.open(lm_dir)
        except CheckpointError:
            if need_weights:
                raise
            tensors = None
        return cls(lm_dir, config, tensors)

    def arrays(self, cfg: OtterConfig, policy: Policy) -> dict[str, np.ndarray]:
        """Our LM parameters at the base vocabulary size (strict check against HF naming)."""
        if self.tensors is None:
            raise CheckpointError(f"{self.path}: no weights found")
        base = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=self.config["vocab_size"]))
        shapes = param_shapes(abstract_model(base, policy))
        rules = K.hf_lm_rules(base)
        tensors: Mapping[str, np.ndarray] = self.tensors
        if base.tied_embeddings and "lm_head.weight" in self.tensors:  # some tied LMs also save the head
            embed = K.TEXT_MODELS[base.text_model_type][2]["embed_tokens.embedding"][0]
            tensors = _resolve_aliases(self.tensors, {"lm_head.weight": embed}, self.path)
        return torch_to_arrays(tensors, base, shapes, source_name=self.path, rules=rules)


@dataclasses.dataclass
class VisionSource:
    """A vision tower on its own: an HF CLIP directory or an open_clip state dict (file)."""

    path: str
    config: VisionConfig
    tensors: KeyView
    layout: str  # "hf_clip" | "open_clip"

    @classmethod
    def open(cls, path: str, args: FlamingoArgs = FlamingoArgs()) -> "VisionSource":
        if not path or not os.path.exists(path):
            raise CheckpointError(f"vision tower {path!r} does not exist")
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
            d = _read_json(os.path.join(path, "config.json"))
            vd = d.get("vision_config", d) if d.get("model_type") == "clip" else d
            if vd.get("model_type", "clip_vision_model") != "clip_vision_model":
                raise ConfigError(f"{path}/config.json: model_type={d.get('model_type')!r} is not a CLIP vision "
                                  f"model (expected 'clip' or 'clip_vision_model')")
            tensors = KeyView.open(path, strip=("module.", "vision_model."),
                                   keep=lambda k: not _CLIP_TEXT_KEYS.match(k) and k != "embeddings.position_ids")
            fields = {f.name: vd[f.name] for f in dataclasses.fields(VisionConfig) if vd.get(f.name) is not None}
            fields.pop("proj_dim", None)
            if "visual_projection.weight" in tensors:
                fields["proj_dim"] = tensors.shape("visual_projection.weight")[0]
            return cls(path, VisionConfig(**fields), tensors, "hf_clip")
        tensors = _open_clip_view(path)
        return cls(path, open_clip_vision_config(tensors, args, path), tensors, "open_clip")

    def rules(self) -> list[K.Rule]:
        if self.layout == "hf_clip":
            return K.hf_clip_vision_rules(self.config, "", "")
        return K.open_clip_vision_rules(self.config, "")

    def arrays(self, cfg: OtterConfig, shapes) -> dict[str, np.ndarray]:
        return torch_to_arrays(self.tensors, cfg, shapes, source_name=self.path, rules=self.rules())


def _open_clip_view(path: str) -> KeyView:
    """open_clip weights: a bare `VisionTransformer` state dict, a CLIP state dict (`visual.*` + text tower), or an
    OpenFlamingo full state dict (`vision_encoder.*`). Keys outside the vision tower must be recognisably the other
    parts of those models."""
    view = KeyView.open(path)
    flamingo_rest = re.compile(r"^(perceiver|lang_encoder)\.")
    for prefix, others in (("visual.", _CLIP_TEXT_KEYS), ("vision_encoder.", flamingo_rest)):
        if any(k.startswith(prefix) for k in view):
            strange = [k for k in view if not k.startswith(prefix) and not others.match(k)]
            if strange:
                raise CheckpointError(f"{path}: keys that belong to no vision tower: {', '.join(strange[:10])}")
            return _prefixed(view, prefix)
    return view


def _prefixed(view: KeyView, prefix: str) -> KeyView:
    return KeyView(view.source, {k[len(prefix):]: view.names[k] for k in view if k.startswith(prefix)}, view.name)


def open_clip_vision_config(tensors: Mapping, args: FlamingoArgs, name: str) -> VisionConfig:
    """Vision hyperparameters from open_clip tensor shapes (+ head width and activation from `args`)."""
    shape = tensors.shape
    for key in ("conv1.weight", "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight"):
        if key not in tensors:
            raise CheckpointError(f"{name}: not an open_clip vision tower (no {key!r})")
    width, channels, patch, _ = shape("conv1.weight")
    grid = math.isqrt(shape("positional_embedding")[0] - 1)
    if grid * grid + 1 != shape("positional_embedding")[0]:
        raise CheckpointError(f"{name}: positional_embedding {list(shape('positional_embedding'))} is not 1 + a "
                              f"square number of patches")
    layers = 1 + max(int(m.group(1)) for k in tensors if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
    if width % args.vision_head_width:
        raise ConfigError(f"{name}: vision width {width} is not a multiple of the head width {args.vision_head_width}"
                          f" (set --vision-head-width)")
    return VisionConfig(hidden_size=width, intermediate_size=shape("transformer.resblocks.0.mlp.c_fc.weight")[0],
                        num_hidden_layers=layers, num_attention_heads=width // args.vision_head_width,
                        image_size=grid * patch, patch_size=patch, num_channels=channels, hidden_act=args.vision_act,
                        proj_dim=shape("proj")[1] if "proj" in tensors else None)


def _resolve_aliases(tensors: Mapping, aliases: Mapping[str, str], name: str) -> dict:
    """A view without alias keys. An alias whose canonical key is present must be equal to it (never silently
    preferred); an alias alone stands in for its canonical key."""
    out = {k: k for k in tensors if k not in aliases}
    bad = []
    for alias, canon in aliases.items():
        if alias not in tensors:
            continue
        if canon not in tensors:
            out[canon] = alias
            continue
        a, b = np.asarray(tensors[alias]), np.asarray(tensors[canon])
        if a.shape != b.shape or not np.array_equal(a, b):
            diff = float(np.abs(a.astype(np.float64) - b).max()) if a.shape == b.shape else "shape"
            bad.append(f"  {alias} != {canon} (max |diff| {diff})")
    if bad:
        raise CheckpointError(f"{name}: alias keys differ from the tensors they duplicate:\n" + "\n".join(bad))
    return _Renamed(tensors, out)


class _Renamed(Mapping[str, np.ndarray]):
    def __init__(self, base: Mapping, names: dict[str, str]):
        self.base, self.names = base, names

    def shape(self, key):
        return (self.base.shape(self.names[key]) if callable(getattr(self.base, "shape", None))
                else tuple(np.shape(self.base[self.names[key]])))

    def __getitem__(self, key):
        return self.base[self.names[key]]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


# ------------------------------------------------------------------------------------------------ configuration
def _layer_indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def detect_text_model(keys, name: str) -> str:
    if "lang_encoder.model.embed_tokens.weight" in keys:
        return "llama"
    if "lang_encoder.transformer.wte.weight" in keys:
        return "mpt"
    if any(k.startswith("lang_encoder.gpt_neox.") for k in keys):
        raise ConfigError(f"{name}: GPT-NeoX OpenFlamingo models are not supported (supported: llama, mpt)")
    raise CheckpointError(f"{name}: not an OpenFlamingo checkpoint (no lang_encoder.model.embed_tokens.weight or "
                          f"lang_encoder.transformer.wte.weight)")


def openflamingo_config(ckpt: Mapping, lm_config: dict, vision: VisionConfig | None, args: FlamingoArgs,
                        name: str, cross_attn_every_n_layers: int | None = None) -> OtterConfig:
    """The `OtterConfig` of an OpenFlamingo checkpoint: shapes from its tensors, LM hyperparameters from
    `lm_config`, and the vision tower from the checkpoint itself or else from `vision`."""
    keys = set(ckpt)
    shape = ckpt.shape
    if "perceiver.layers.0.to_q.weight" in keys:
        raise CheckpointError(f"{name}: this is the Otter HF layout (perceiver.layers.0.to_q.weight), not "
                              f"OpenFlamingo's; convert it with `otter-jax convert --from-torch`")
    if "perceiver.latents" not in keys or "perceiver.layers.0.0.to_q.weight" not in keys:
        raise CheckpointError(f"{name}: not an OpenFlamingo checkpoint (no perceiver.latents / "
                              f"perceiver.layers.0.0.to_q.weight)")
    mtype = detect_text_model(keys, name)
    if lm_config["model_type"] != mtype:
        raise ConfigError(f"{name}: checkpoint of the wrong architecture: it holds an OpenFlamingo-{mtype} model, "
                          f"but the language model directory is {lm_config['model_type']!r}")
    if any(k.startswith("vision_encoder.") for k in keys):
        vision = open_clip_vision_config(_prefixed(ckpt, "vision_encoder."), args, name)
    elif vision is None:
        raise CheckpointError(f"{name}: the checkpoint has no vision_encoder.* weights; give the vision tower "
                              f"(--vision: open_clip state dict or HF CLIP directory)")
    num_latents, vis_dim = shape("perceiver.latents")
    if vision.hidden_size != vis_dim:
        raise ConfigError(f"vision tower width {vision.hidden_size} does not match the perceiver width {vis_dim} "
                          f"(perceiver.latents {list(shape('perceiver.latents'))} in {name})")
    inner = shape("perceiver.layers.0.0.to_q.weight")[0]
    _, layers, _ = K.TEXT_MODELS[mtype]
    wrapped = re.escape(f"lang_encoder.{layers}.") + r"(\d+)\.gated_cross_attn_layer\.attn_gate$"
    xattn = (_layer_indices(keys, wrapped)
             or _layer_indices(keys, r"lang_encoder\.gated_cross_attn_layers\.(\d+)\.attn_gate$"))
    if not xattn:
        raise CheckpointError(f"{name}: no gated cross-attention layers (lang_encoder.{layers}.{{i}}."
                              f"gated_cross_attn_layer.attn_gate)")
    num_layers = lm_config.get("num_hidden_layers", lm_config.get("n_layers"))
    n = xattn[0] + 1
    if xattn != [i for i in range(num_layers) if (i + 1) % n == 0]:
        raise ConfigError(f"{name}: cross-attention layers {xattn} do not follow the every-n rule for the "
                          f"{num_layers}-layer language model")
    if cross_attn_every_n_layers is not None and cross_attn_every_n_layers != n:
        raise ConfigError(f"{name}: the checkpoint has cross-attention every {n} layers, not "
                          f"{cross_attn_every_n_layers}")
    x = xattn[0]
    block = (f"lang_encoder.{layers}.{x}.gated_cross_attn_layer." if f"lang_encoder.{layers}.{x}.gated_cross_attn_layer"
             f".attn.to_q.weight" in keys else f"lang_encoder.gated_cross_attn_layers.{x}.")
    x_inner, lang_dim = shape(block + "attn.to_q.weight")
    if shape(block + "attn.to_kv.weight")[1] != vis_dim:
        raise ConfigError(f"{name}: {block}attn.to_kv.weight {list(shape(block + 'attn.to_kv.weight'))} does not "
                          f"read {vis_dim}-wide media")
    for what, total, dh in (("perceiver", inner, args.perceiver_dim_head), ("cross-attention", x_inner,
                                                                            args.xattn_dim_head)):
        if total % dh:
            raise ConfigError(f"{name}: {what} projection width {total} is not a multiple of the head size {dh} "
                              f"(set --{'perceiver' if what == 'perceiver' else 'xattn'}-dim-head)")
    embed = K.TEXT_MODELS[mtype][2]["embed_tokens.embedding"][0]
    text = dict(lm_config, vocab_size=shape(f"lang_encoder.{embed}")[0])
    d = {"model_type": "otter", "vision_config": {"model_type": "clip_vision_model", **dataclasses.asdict(vision)},
         "text_config": text, "cross_attn_every_n_layers": n, "only_attend_previous": True,
         "tie_word_embeddings": False, "vis_dim": vis_dim,
         "perceiver_depth": len(_layer_indices(keys, r"perceiver\.layers\.(\d+)\.0\.to_q\.weight$")),
         "perceiver_heads": inner // args.perceiver_dim_head, "perceiver_dim_head": args.perceiver_dim_head,
         "perceiver_num_latents": num_latents,
         "perceiver_ff_mult": shape("perceiver.layers.0.1.1.weight")[0] // vis_dim,
         "xattn_heads": x_inner // args.xattn_dim_head, "xattn_dim_head": args.xattn_dim_head,
         "xattn_ff_mult": shape(block + "ff.1.weight")[0] // lang_dim}
    if d["vision_config"]["proj_dim"] is None:
        del d["vision_config"]["proj_dim"]
    return OtterConfig.from_hf_dict(d, source=name)


# ------------------------------------------------------------------------------------------------ rows
def fill_rows(a: np.ndarray, rows: int, axis: int) -> np.ndarray:
    """Grow (new slices = mean of the existing ones, in float64 then cast) or cut `a` to `rows` along `axis`."""
    have = a.shape[axis]
    if rows <= have:
        return np.take(a, np.arange(rows), axis=axis)
    mean = a.astype(np.float64).mean(axis=axis, keepdims=True).astype(a.dtype)
    return np.concatenate([a, np.repeat(mean, rows - have, axis=axis)], axis=axis)


VOCAB_PARAMS = {"embed_tokens.embedding": 0, "lm_head.kernel": 1}  # our vocab-sized parameters -> vocab axis


def _row_names(rows: list[int], names: dict[int, str] | None) -> str:
    contiguous = rows == list(range(rows[0], rows[-1] + 1))
    spans = (str(rows[0]) if len(rows) == 1 else f"{rows[0]}..{rows[-1]}" if contiguous
             else ", ".join(map(str, rows)))
    named = [names[r] for r in rows if names and r in names]
    return spans + (f" ({', '.join(named)})" if named else "")


def warn_filled(key: str, rows: list[int], have: int, names: dict[int, str] | None, source: str,
                also: str = "") -> None:
    warnings.warn(f"{key}: rows {_row_names(rows, names)} are in no checkpoint ({source} has {have} rows{also}); "
                  f"filled with the mean of rows 0..{have - 1}", stacklevel=3)


# ------------------------------------------------------------------------------------------------ loading
def checkpoint_arrays(ckpt: Mapping, cfg: OtterConfig, shapes, name: str
                      ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Our parameters found in an OpenFlamingo state dict (full or partial), and for the others the OpenFlamingo
    keys that are absent. Unknown or mis-shaped keys and unequal aliases are errors."""
    of_rules = K.openflamingo_rules(cfg)
    expected = expected_torch_shapes(cfg, shapes, of_rules)
    aliases = K.openflamingo_aliases(cfg)
    expected.update({a: expected[c] for a, c in aliases.items()})
    check_keys(name, {k: ckpt.shape(k) for k in ckpt}, expected, optional=expected)
    canon = _resolve_aliases(ckpt, aliases, name)
    arrays: dict[str, np.ndarray] = {}
    missing: dict[str, list[str]] = {}
    partial: list[str] = []
    for rule in of_rules:
        keys = rule.torch_keys()
        present = [k in canon for k in keys]
        if all(present):
            parts = [rule.transform.to_ours(np.asarray(canon[k])) for k in keys]
            arrays[rule.ours] = parts[0] if rule.indices is None else np.stack(parts)
        else:
            missing[rule.ours] = [k for k, p in zip(keys, present) if not p]
            if any(present):  # some layers in the checkpoint, some not: never patched up from base weights
                partial += missing[rule.ours]
    if partial:
        raise CheckpointError(f"{name}: incomplete: it has some layers of a tensor kind but not these:\n"
                              + "\n".join(f"  missing:     {k}" for k in partial))
    return arrays, missing


def _tokens_from_tokenizer(tok) -> SpecialTokens:
    vocab = tok.get_vocab()
    return SpecialTokens(media=vocab[MEDIA], endofchunk=vocab[ENDOFCHUNK], answer=vocab.get(ANSWER),
                         pad=tok.pad_token_id, bos=tok.bos_token_id, eos=tok.eos_token_id)


def openflamingo_tokenizer(src_dir: str, out_dir: str | None = None):
    """The tokenizer of `src_dir` with OpenFlamingo's tokens (`<|endofchunk|>`, `<image>`, then `<PAD>` if it has
    no pad token) added as its factory adds them; saved to `out_dir` when given. Returns (tokenizer, tokens)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src_dir, local_files_only=True)
    vocab = tok.get_vocab()
    if not all(t in vocab for t in OPENFLAMINGO_TOKENS):
        tok.add_special_tokens({"additional_special_tokens": list(OPENFLAMINGO_TOKENS)})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD})
    if out_dir:
        tok.save_pretrained(out_dir)
    return tok, _tokens_from_tokenizer(tok)


def has_tokenizer(path: str | None) -> bool:
    return bool(path) and any(os.path.exists(os.path.join(path, f)) for f in
                              ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"))


def open_checkpoint(path: str) -> KeyView:
    return KeyView.open(path)


def load_openflamingo(checkpoint: str, lm: str, vision: str | None = None, *, tokenizer: str | None = None,
                      tokenizer_out: str | None = None, args: FlamingoArgs = FlamingoArgs(), policy: Policy = Policy(),
                      mesh=None, rules: S.Rules = S.DEFAULT_RULES) -> tuple[Otter, OtterConfig]:
    """Read an OpenFlamingo checkpoint (full state dict or trainable-only) into our model.

    `lm` is the base LM directory: its config.json always, and its weights for whatever the checkpoint lacks.
    `vision` (open_clip state dict or HF CLIP directory) is needed only when the checkpoint has no vision tower.
    Checkpoint tensors take precedence over base weights, as OpenFlamingo's `load_state_dict(strict=False)` does,
    but here every key is checked. `tokenizer` (default: `lm` when it has tokenizer files) provides the special
    token ids; OpenFlamingo's tokens are added if missing, and the result is saved to `tokenizer_out` if given.
    """
    ckpt = open_checkpoint(checkpoint)
    lm_src = LMSource.open(lm, need_weights=False)
    vis_src = VisionSource.open(vision, args) if vision else None
    cfg = openflamingo_config(ckpt, lm_src.config, vis_src.config if vis_src else None, args, checkpoint)

    tok_dir = tokenizer or (lm if has_tokenizer(lm) else None)
    names = None
    if tok_dir:
        tok, tokens = openflamingo_tokenizer(tok_dir, tokenizer_out)
        if len(tok) > cfg.text.vocab_size:
            raise ConfigError(f"{tok_dir}: the tokenizer has {len(tok)} tokens (with OpenFlamingo's) but "
                              f"{checkpoint} has {cfg.text.vocab_size} embedding rows")
        cfg = dataclasses.replace(cfg, tokens=tokens)
        names = {i: t for t, i in tok.get_vocab().items()}
    else:
        warnings.warn(f"{lm}: no tokenizer files (pass tokenizer=...); the model has no special token ids")

    abstract = abstract_model(cfg, policy)
    shapes = param_shapes(abstract)
    arrays, missing = checkpoint_arrays(ckpt, cfg, shapes, checkpoint)
    vision_missing = [o for o in missing if o.startswith("vision_encoder.")]
    if vision_missing and vis_src is not None:
        if vis_src.config != cfg.vision:
            raise ConfigError(f"{vision}: vision tower {vis_src.config} does not match the checkpoint's {cfg.vision}")
        base = vis_src.arrays(cfg, shapes)
        for o in vision_missing:
            arrays[o] = base[o]
            del missing[o]
    lm_params = {r.ours for r in K.hf_lm_rules(cfg)}
    lm_missing = [o for o in missing if o in lm_params]
    if lm_missing:
        if lm_src.tensors is None:
            raise CheckpointError(f"{checkpoint}: lacks language-model weights ({len(lm_missing)} parameters, e.g. "
                                  f"{missing[lm_missing[0]][0]}) and {lm} has no weights")
        base = lm_src.arrays(cfg, policy)
        for o in lm_missing:
            a = base[o]
            if o in VOCAB_PARAMS and a.shape[VOCAB_PARAMS[o]] != cfg.text.vocab_size:
                have = a.shape[VOCAB_PARAMS[o]]
                a = fill_rows(a, cfg.text.vocab_size, VOCAB_PARAMS[o])
                if cfg.text.vocab_size > have:
                    key = missing[o][0]
                    warn_filled(key, list(range(have, cfg.text.vocab_size)), have, names, lm)
            arrays[o] = a
            del missing[o]
    if missing:
        keys = [k for ks in missing.values() for k in ks]
        hint = " (give the vision tower with --vision)" if any(o.startswith("vision_encoder.") for o in missing) else ""
        raise CheckpointError(f"{checkpoint}: {len(keys)} tensors are in neither the checkpoint nor the base "
                              f"weights{hint}:\n" + "\n".join(f"  missing:     {k}" for k in keys))
    return relayout(S.place(abstract, arrays, mesh, rules), policy.scan_layers), cfg


# ------------------------------------------------------------------------------------------------ export
def _to_torch(a: np.ndarray):
    import torch

    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def trainable_keys(cfg: OtterConfig, keys) -> list[str]:
    """OpenFlamingo's `filter_state_dict_to_trainable` for the factory's freezing: trainable parameters
    (perceiver, gated blocks, input embeddings) and names containing "embed", then minus the alias and vision keys.
    A tied output head is not a separate named parameter, so the filter never drops it."""
    embed = "lang_encoder." + K.TEXT_MODELS[cfg.text_model_type][2]["embed_tokens.embedding"][0]
    aliases = K.openflamingo_aliases(cfg)

    def keep(k: str) -> bool:
        if k.startswith(("lang_encoder.old_decoder_blocks", "lang_encoder.gated_cross_attn_layers", "vision_encoder")):
            return False
        if k in aliases:  # tied head: not in named_parameters(), so never filtered out
            return True
        return k.startswith("perceiver.") or ".gated_cross_attn_layer." in k or k == embed or "embed" in k

    return [k for k in keys if keep(k)]


def openflamingo_state_dict(model: Otter, cfg: OtterConfig, trainable_only: bool = False) -> dict[str, np.ndarray]:
    """Our model as OpenFlamingo's `Flamingo.state_dict()` (with its alias keys), or as the training checkpoint."""
    if cfg.vision.proj_dim is None and not trainable_only:
        raise ConfigError("the model has no vision projection (its vision tower came from an HF CLIPVisionModel "
                          "without visual_projection); OpenFlamingo's full state dict needs vision_encoder.proj. "
                          "Export the trainable-only checkpoint instead")
    out = arrays_to_torch(S.flat_arrays(relayout(model, True)), cfg, K.openflamingo_rules(cfg))
    for alias, canon in K.openflamingo_aliases(cfg).items():
        out[alias] = out[canon]
    if trainable_only:
        out = {k: out[k] for k in trainable_keys(cfg, out)}
    return out


def save_openflamingo(model: Otter, cfg: OtterConfig, path: str, trainable_only: bool = False,
                      metadata: dict[str, str] | None = None, dtype: str | None = None) -> None:
    """Write a `.safetensors` file, or a torch `.pt` / `.bin` file (plain state dict, as OpenFlamingo's released
    checkpoints). `dtype` casts on the way out. The file appears complete or not at all; an existing file is never
    overwritten."""
    if os.path.exists(path):
        raise FileExistsError(f"{path}: output file exists")
    if not path.endswith((".safetensors", ".pt", ".bin", ".pth")):
        raise ValueError(f"{path}: use a .safetensors, .pt or .bin file name")
    tensors = openflamingo_state_dict(model, cfg, trainable_only)
    if dtype is not None:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                      metadata={"format": "pt", **(metadata or {})})
        elif path.endswith((".pt", ".bin", ".pth")):
            import torch

            torch.save({k: _to_torch(v) for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

"""OpenFlamingo checkpoints: parity with the original PyTorch model from the full state dict and from base weights +
training checkpoint, bit-exact export of both files, the Otter HF export, and the errors for bad input."""
import json
import re
import struct
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from golden_helpers import golden_dir
from openflamingo_helpers import GOLDEN_OF_FIXTURES, golden_of_dir
from otter_jax import checkpoint, convert
from otter_jax import sharding as S
from otter_jax.cli import main as cli_main
from otter_jax.convert import openflamingo as OF
from otter_jax.convert.torch_io import TensorSource


def _config(name):
    return json.loads((golden_of_dir(name) / "config.json").read_text())


def _args(name) -> OF.FlamingoArgs:
    c = _config(name)
    return OF.FlamingoArgs(vision_head_width=c["vision"]["head_width"], perceiver_dim_head=c["perceiver"]["dim_head"],
                           xattn_dim_head=c["gated_xattn"]["dim_head"])


def _cli_args(name) -> list[str]:
    a = _args(name)
    return ["--vision-head-width", str(a.vision_head_width), "--perceiver-dim-head", str(a.perceiver_dim_head),
            "--xattn-dim-head", str(a.xattn_dim_head)]


def _write_lm(d, name: str, resized: bool, weights: bool = True):
    """A base LM directory cut out of the fixture's full state dict (HF naming, no aliases, no gated blocks).
    `resized`: at the fixture's vocabulary (83 / 293 rows), else at the size before OpenFlamingo added tokens."""
    c = _config(name)
    hf = dict(c["lm"]["hf_config"])
    d.mkdir(parents=True)
    if weights:
        tensors = {}
        for k, v in load_file(golden_of_dir(name) / "model.safetensors").items():
            if k.startswith("lang_encoder.") and "old_decoder_blocks" not in k and "gated_cross_attn" not in k:
                tensors[k[len("lang_encoder."):].replace(".decoder_layer.", ".")] = v
        if c["lm"]["tied_embeddings"]:
            del tensors["lm_head.weight"]
        if not resized:
            hf["vocab_size"] = c["lm"]["vocab_size_before_resize"]
            for k in ("model.embed_tokens.weight", "lm_head.weight", "transformer.wte.weight"):
                if k in tensors:
                    tensors[k] = np.ascontiguousarray(tensors[k][:hf["vocab_size"]])
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(hf))
    return d


def _write_open_clip(path, name: str):
    full = load_file(golden_of_dir(name) / "model.safetensors")
    save_file({k[len("vision_encoder."):]: v for k, v in full.items() if k.startswith("vision_encoder.")}, path)
    return path


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """name -> paths of the base pieces: lm (resized vocab), lm_base (original vocab), lm_config_only, vision."""
    cache = {}

    def get(name):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            cache[name] = {"lm": _write_lm(root / "lm", name, resized=True),
                           "lm_base": _write_lm(root / "lm_base", name, resized=False),
                           "lm_config_only": _write_lm(root / "lm_cfg", name, resized=False, weights=False),
                           "vision": _write_open_clip(root / "open_clip.safetensors", name)}
        return cache[name]

    return get


_models = {}


@pytest.fixture(scope="session")
def of_model(base):
    """name -> (model, cfg) from the full state dict, loaded once."""

    def get(name):
        if name not in _models:
            d = golden_of_dir(name)
            _models[name] = OF.load_openflamingo(str(d / "model.safetensors"), str(base(name)["lm_config_only"]),
                                                 tokenizer=str(d / "tokenizer"), args=_args(name))
        return _models[name]

    return get


def _maxdiff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b).max())


def _check_outputs(model, name, columns=None):
    d = golden_of_dir(name)
    inputs, ref = dict(np.load(d / "inputs.npz")), dict(np.load(d / "outputs.npz"))
    out = model(inputs["vision_x"], inputs["input_ids"], attention_mask=inputs["attention_mask"],
                output_intermediates=True)
    cols = slice(None) if columns is None else slice(0, columns)
    assert _maxdiff(out.logits[..., cols], ref["logits"][..., cols]) <= 1e-4
    tokens = ref["vision_tokens"]
    assert _maxdiff(np.asarray(out.vision_last_hidden_state)[:, 1:], tokens.reshape((-1,) + tokens.shape[-2:])) <= 1e-4
    assert _maxdiff(out.perceiver_out, ref["perceiver_out"]) <= 1e-4
    vis = model.vision_encoder  # ln_post(CLS) @ proj: not used by Flamingo, but it checks ln_post and proj
    pooled = vis.visual_projection(vis.post_layernorm(out.vision_last_hidden_state[:, 0]))
    assert _maxdiff(pooled, ref["vision_pooled"]) <= 1e-4
    return out


def _arrays_equal(m1, m2):
    a, b = S.flat_arrays(m1), S.flat_arrays(m2)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", GOLDEN_OF_FIXTURES)
def test_full_state_dict_matches_reference(of_model, name):
    model, cfg = of_model(name)
    c = _config(name)
    assert cfg.xattn_layer_indices == c["gated_xattn"]["layers_with_xattn"]
    assert (cfg.tokens.media, cfg.tokens.endofchunk, cfg.tokens.pad) == tuple(
        c["special_tokens"][k] for k in ("media_token_id", "eoc_token_id", "pad_token_id"))
    assert cfg.vision.hidden_act == "quick_gelu" and cfg.text.vocab_size == c["lm"]["vocab_size"]
    _check_outputs(model, name)


@pytest.mark.parametrize("name", GOLDEN_OF_FIXTURES)
def test_base_weights_plus_trainable_checkpoint(of_model, base, name):
    d = golden_of_dir(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the base LM has every row: nothing may be filled
        model, _ = OF.load_openflamingo(str(d / "checkpoint_trainable.safetensors"), str(base(name)["lm"]),
                                        str(base(name)["vision"]), tokenizer=str(d / "tokenizer"), args=_args(name))
    _arrays_equal(model, of_model(name)[0])
    _check_outputs(model, name)


def test_lm_head_rows_missing_from_every_file_are_named(base):
    """LLaMA: OpenFlamingo's checkpoint has no lm_head, and the base LM has 80 rows for an 83-token model."""
    name = "of_llama_tiny"
    d = golden_of_dir(name)
    with pytest.warns(UserWarning, match=r"lang_encoder\.lm_head\.weight: rows 80\.\.82 \(<\|endofchunk\|>, <image>, "
                                         r"<PAD>\) are in no checkpoint .* filled with the mean of rows 0\.\.79"):
        model, _ = OF.load_openflamingo(str(d / "checkpoint_trainable.safetensors"), str(base(name)["lm_base"]),
                                        str(base(name)["vision"]), tokenizer=str(d / "tokenizer"), args=_args(name))
    head = np.asarray(model.lm_head.kernel[...])
    mean = head[:, :80].astype(np.float64).mean(1, keepdims=True).astype(np.float32)
    np.testing.assert_array_equal(head[:, 80:], np.repeat(mean, 3, 1))
    _check_outputs(model, name, columns=80)


def test_tied_mpt_from_base_vocab_needs_no_fill(of_model, base):
    name = "of_mpt_tiny"
    d = golden_of_dir(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = OF.load_openflamingo(str(d / "checkpoint_trainable.safetensors"), str(base(name)["lm_base"]),
                                        str(base(name)["vision"]), tokenizer=str(d / "tokenizer"), args=_args(name))
    _arrays_equal(model, of_model(name)[0])


def test_hf_clip_vision_tower_matches_torch_and_loads(of_model, base, tmp_path):
    """open_clip -> HF CLIP naming checked by HF's own PyTorch CLIP, then used as the vision tower."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from otter_jax.convert import keymaps as K

    name = "of_llama_tiny"
    model, cfg = of_model(name)
    v = cfg.vision
    hf_cfg = transformers.CLIPVisionConfig(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                                           num_hidden_layers=v.num_hidden_layers,
                                           num_attention_heads=v.num_attention_heads, image_size=v.image_size,
                                           patch_size=v.patch_size, hidden_act="quick_gelu", projection_dim=v.proj_dim)
    hf = transformers.CLIPVisionModelWithProjection(hf_cfg).eval()
    tensors = convert.arrays_to_torch(S.flat_arrays(model), cfg, K.hf_clip_vision_rules(v, "vision_model.", ""))
    hf.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in tensors.items()}, strict=True)
    d = golden_of_dir(name)
    inputs, ref = dict(np.load(d / "inputs.npz")), dict(np.load(d / "outputs.npz"))
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(inputs["vision_x"].reshape(-1, 3, 28, 28)))
    assert _maxdiff(out.last_hidden_state[:, 1:].numpy(), ref["vision_tokens"].reshape(4, 4, -1)) <= 1e-4
    assert _maxdiff(out.image_embeds.numpy(), ref["vision_pooled"]) <= 1e-4
    hf.save_pretrained(tmp_path / "clip")
    model2, _ = OF.load_openflamingo(str(d / "checkpoint_trainable.safetensors"), str(base(name)["lm"]),
                                     str(tmp_path / "clip"), tokenizer=str(d / "tokenizer"), args=_args(name))
    _arrays_equal(model2, model)


def test_module_prefix_and_training_checkpoint_pt(of_model, base, tmp_path):
    """A DDP `checkpoint.pt` ({"model_state_dict": {"module.…": …}}) and an open_clip CLIP `.pt` (`visual.*` + text
    tower) load to the same model."""
    torch = pytest.importorskip("torch")
    name = "of_mpt_tiny"
    d = golden_of_dir(name)
    ckpt = load_file(d / "checkpoint_trainable.safetensors")
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in ckpt.items()}},
               tmp_path / "checkpoint.pt")
    vision = load_file(base(name)["vision"])
    clip = {f"visual.{k}": torch.from_numpy(v) for k, v in vision.items()}
    clip.update({"positional_embedding": torch.zeros(8, 16), "transformer.resblocks.0.ln_1.weight": torch.ones(16),
                 "token_embedding.weight": torch.zeros(64, 16), "logit_scale": torch.ones(())})
    torch.save(clip, tmp_path / "open_clip.pt")
    model, _ = OF.load_openflamingo(str(tmp_path / "checkpoint.pt"), str(base(name)["lm"]),
                                    str(tmp_path / "open_clip.pt"), tokenizer=str(d / "tokenizer"), args=_args(name))
    _arrays_equal(model, of_model(name)[0])


# ------------------------------------------------------------------------------------------------ export
def _header_and_data(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.mark.parametrize("name", GOLDEN_OF_FIXTURES)
@pytest.mark.parametrize("kind", ["model", "checkpoint_trainable"])
def test_export_reproduces_both_files(of_model, name, kind, tmp_path):
    model, cfg = of_model(name)
    src = golden_of_dir(name) / f"{kind}.safetensors"
    out = tmp_path / f"{kind}.safetensors"
    OF.save_openflamingo(model, cfg, str(out), trainable_only=kind != "model",
                         metadata=TensorSource(str(src)).metadata())
    # Same header (every key, dtype, shape, offset; metadata) and the same data bytes.
    assert _header_and_data(out) == _header_and_data(src)
    assert len(load_file(out)) == _config(name)["weights"][f"num_keys_{'model' if kind == 'model' else 'checkpoint'}"]


def _otter_hf_name(of_key: str) -> str:
    """The upstream OpenFlamingo -> Otter renames."""
    import re

    k = re.sub(r"^perceiver\.layers\.(\d+)\.0\.", r"perceiver.layers.\1.", of_key)
    k = re.sub(r"^perceiver\.layers\.(\d+)\.1\.", r"perceiver.layers.\1.feed_forward.", k)
    return k.replace(".gated_cross_attn_layer.ff.", ".gated_cross_attn_layer.feed_forward.")


def test_openflamingo_to_otter_hf_layout(of_model, tmp_path):
    model, cfg = of_model("of_llama_tiny")
    convert.save_torch_checkpoint(model, cfg, str(tmp_path / "otter"))
    otter = load_file(tmp_path / "otter" / "model.safetensors")
    full = load_file(golden_of_dir("of_llama_tiny") / "model.safetensors")
    aliases = ("lang_encoder.old_decoder_blocks.", "lang_encoder.gated_cross_attn_layers.")
    renamed = {_otter_hf_name(k): v for k, v in full.items()
               if not k.startswith(("vision_encoder.",) + aliases)}
    for k, v in renamed.items():
        np.testing.assert_array_equal(otter[k], v, err_msg=k)
    w = full["vision_encoder.transformer.resblocks.1.attn.in_proj_weight"]
    v_proj = otter["vision_encoder.vision_model.encoder.layers.1.self_attn.v_proj.weight"]
    np.testing.assert_array_equal(v_proj, w[128:])
    np.testing.assert_array_equal(otter["vision_encoder.visual_projection.weight"], full["vision_encoder.proj"].T)
    # Each layer's fused in_proj weight and bias become separate q, k, v tensors: 4 more keys per layer.
    n_vision = sum(k.startswith("vision_encoder.") for k in full)
    assert len(otter) == len(renamed) + n_vision + 4 * cfg.vision.num_hidden_layers
    model2, _ = convert.load_torch_checkpoint(str(tmp_path / "otter"))
    _arrays_equal(model2, model)


def test_cli_round_trip(base, tmp_path):
    torch = pytest.importorskip("torch")
    name = "of_llama_tiny"
    d = golden_of_dir(name)
    ckpt = tmp_path / "ckpt"
    assert cli_main(["convert", "--from-openflamingo", str(d / "checkpoint_trainable.safetensors"),
                     "--lm", str(base(name)["lm"]), "--vision", str(base(name)["vision"]),
                     "--tokenizer", str(d / "tokenizer"), "--out", str(ckpt)] + _cli_args(name)) == 0
    model, cfg = checkpoint.load_model(str(ckpt))
    assert cfg.tokens.media == 81 and cfg.tokens.answer is None
    _check_outputs(model, name)
    assert cli_main(["convert", "--to-openflamingo", str(ckpt), "--out", str(tmp_path / "full.safetensors")]) == 0
    ref = load_file(d / "model.safetensors")
    got = load_file(tmp_path / "full.safetensors")
    assert sorted(got) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert cli_main(["convert", "--to-openflamingo", str(ckpt), "--trainable-only",
                     "--out", str(tmp_path / "checkpoint.pt")]) == 0
    pt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ref = load_file(d / "checkpoint_trainable.safetensors")
    assert sorted(pt) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(pt[k].numpy(), ref[k], err_msg=k)


# ------------------------------------------------------------------------------------------------ bad input
def _edited_copy(tmp_path, name, edit, kind="model"):
    tensors = load_file(golden_of_dir(name) / f"{kind}.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "edited.safetensors")
    return str(tmp_path / "edited.safetensors")


def test_unequal_alias_is_an_error_and_nothing_is_written(base, tmp_path, capsys):
    name = "of_llama_tiny"
    key = "lang_encoder.old_decoder_blocks.2.mlp.up_proj.weight"

    def edit(t):
        t[key] = t[key] + 1e-3

    path = _edited_copy(tmp_path, name, edit)
    out = tmp_path / "out"
    code = cli_main(["convert", "--from-openflamingo", path, "--lm", str(base(name)["lm_config_only"]), "--out",
                     str(out)] + _cli_args(name))
    assert code == 2  # a user's file: one line naming both keys, no traceback
    assert re.search(rf"{key} != lang_encoder\.model\.layers\.2\.decoder_layer\.mlp\.up_proj\.weight "
                     rf"\(max \|diff\| 0\.001", capsys.readouterr().err)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_unknown_and_misshaped_keys_are_listed(base, tmp_path):
    name = "of_mpt_tiny"

    def edit(t):
        t["perceiver.layers.0.2.weight"] = t["perceiver.latents"]
        t["perceiver.layers.1.0.to_out.weight"] = t["perceiver.layers.1.0.to_out.weight"][:, :-1].copy()

    path = _edited_copy(tmp_path, name, edit, kind="checkpoint_trainable")
    with pytest.raises(convert.CheckpointError) as e:
        OF.load_openflamingo(path, str(base(name)["lm"]), str(base(name)["vision"]), args=_args(name))
    msg = str(e.value)
    assert "unexpected:  perceiver.layers.0.2.weight" in msg
    assert "wrong shape: perceiver.layers.1.0.to_out.weight  expected [32, 24], found [32, 23]" in msg


def test_wrong_architecture(base):
    with pytest.raises(convert.ConfigError, match=r"wrong architecture: it holds an OpenFlamingo-llama model, but the "
                                                  r"language model directory is 'mpt'"):
        OF.load_openflamingo(str(golden_of_dir("of_llama_tiny") / "model.safetensors"),
                             str(base("of_mpt_tiny")["lm"]), args=_args("of_llama_tiny"))


def test_otter_hf_checkpoint_is_not_openflamingo(base):
    src = golden_dir("otter_llama_tiny") / "model.safetensors"
    if not src.exists():
        pytest.skip("Otter golden fixtures absent")
    with pytest.raises(convert.CheckpointError, match="Otter HF layout .* --from-torch"):
        OF.load_openflamingo(str(src), str(base("of_llama_tiny")["lm"]))


def test_vision_width_must_match_perceiver(base):
    with pytest.raises(convert.ConfigError, match=r"vision tower width 32 does not match the perceiver width 64"):
        OF.load_openflamingo(str(golden_of_dir("of_llama_tiny") / "checkpoint_trainable.safetensors"),
                             str(base("of_llama_tiny")["lm"]), str(base("of_mpt_tiny")["vision"]),
                             args=_args("of_llama_tiny"))


def test_missing_pieces(base, tmp_path):
    ckpt = str(golden_of_dir("of_llama_tiny") / "checkpoint_trainable.safetensors")
    with pytest.raises(convert.CheckpointError, match="language model directory .*nowhere.* does not exist"):
        OF.load_openflamingo(ckpt, str(tmp_path / "nowhere"))
    with pytest.raises(convert.CheckpointError, match="no vision_encoder.* weights; give the vision tower"):
        OF.load_openflamingo(ckpt, str(base("of_llama_tiny")["lm"]), args=_args("of_llama_tiny"))
    with pytest.raises(convert.CheckpointError, match=r"lacks language-model weights .* has no weights"):
        OF.load_openflamingo(ckpt, str(base("of_llama_tiny")["lm_config_only"]), str(base("of_llama_tiny")["vision"]),
                             args=_args("of_llama_tiny"))


def test_export_refuses_existing_file(of_model, tmp_path):
    model, cfg = of_model("of_mpt_tiny")
    (tmp_path / "x.safetensors").write_text("precious")
    with pytest.raises(FileExistsError):
        OF.save_openflamingo(model, cfg, str(tmp_path / "x.safetensors"))
    assert (tmp_path / "x.safetensors").read_text() == "precious"

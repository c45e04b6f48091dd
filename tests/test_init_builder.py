"""`otter-jax init`: Otter-Init from a CLIP vision tower and a base LLaMA / MPT built here with HF transformers.

With the gates at 0 the built model must compute exactly the base LM on text (checked against HF's PyTorch model),
the tokenizer must carry Otter's special tokens, and bad input must fail before anything is written."""
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from otter_jax import checkpoint, convert  # noqa: E402
from otter_jax import sharding as S  # noqa: E402
from otter_jax.cli import main as cli_main  # noqa: E402
from otter_jax.convert import init_builder  # noqa: E402
from otter_jax.convert import openflamingo as OF  # noqa: E402

TEXTS = ["a red bird on a tree", "two dogs in the snow", "a cat sat on the mat", "the boat is on the lake"] * 4
SMALL = dict(perceiver=dict(depth=1, heads=2, dim_head=8, num_latents=4, ff_mult=2),
             xattn=dict(heads=2, dim_head=8, ff_mult=2))


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"],
                                                        show_progress=False))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


def _perturb_norms(model):
    with torch.no_grad():  # non-trivial norms, so a norm weight that went missing would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.rand_like(p) * 0.4 - 0.2)
    return model


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    tok = _tokenizer()
    torch.manual_seed(0)
    llama = _perturb_norms(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, initializer_range=0.1, bos_token_id=1,
        eos_token_id=2))).eval()
    mpt = _perturb_norms(transformers.MptForCausalLM(transformers.MptConfig(
        d_model=24, n_heads=2, n_layers=4, vocab_size=len(tok), max_seq_len=64, initializer_range=0.1))).eval()
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
        patch_size=14, hidden_act="quick_gelu")).eval()
    for name, model in (("llama", llama), ("mpt", mpt), ("clip", clip)):
        model.save_pretrained(root / name)
    for name in ("llama", "mpt"):
        tok.save_pretrained(root / name)
    return {"root": root, "llama": llama, "mpt": mpt, "tok_len": len(tok)}


def _text_logits_match(ckpt_dir, hf_model, base_vocab: int):
    model, cfg = checkpoint.load_model(str(ckpt_dir))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, base_vocab, size=(2, 10))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    vision_x = rng.standard_normal((2, 1, 1, 3, 28, 28)).astype(np.float32)
    ours = np.asarray(model(vision_x, ids, attention_mask=mask).logits)
    with torch.no_grad():
        ref = hf_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    keep = mask.astype(bool)
    assert np.abs(ours[keep][:, :base_vocab] - ref[keep]).max() <= 1e-4
    return model, cfg


def _check_tokenizer(ckpt_dir, cfg, base_vocab: int):
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt_dir), local_files_only=True)
    specials = {"<|endofchunk|>": cfg.tokens.endofchunk, "<image>": cfg.tokens.media, "<answer>": cfg.tokens.answer,
                "<PAD>": cfg.tokens.pad}
    assert specials == {t: base_vocab + i for i, t in enumerate(specials)}  # appended in the reference's order
    assert {t: tok.convert_tokens_to_ids(t) for t in specials} == specials and tok.pad_token == "<PAD>"
    text = "<image>a cat on the mat<answer>a dog<|endofchunk|>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids[0] == cfg.tokens.media and ids[-1] == cfg.tokens.endofchunk and cfg.tokens.answer in ids
    assert tok.decode(ids).replace(" ", "") == text.replace(" ", "")


def test_llama_init_equals_base_lm_on_text(bases, tmp_path):
    v0 = bases["tok_len"]
    with pytest.warns(UserWarning, match=rf"lm_head\.weight: rows {v0}\.\.{v0 + 3} \(<\|endofchunk\|>, <image>, "
                                         rf"<answer>, <PAD>\) .* filled with the mean of rows 0\.\.{v0 - 1}"):
        cfg = init_builder.build_init(str(bases["root"] / "clip"), str(bases["root"] / "llama"), str(tmp_path / "init"),
                                      cross_attn_every_n_layers=2, **SMALL)
    assert cfg.text.vocab_size == v0 + 4 and cfg.xattn_layer_indices == [1] and cfg.num_tail_layers == 1
    model, cfg = _text_logits_match(tmp_path / "init", bases["llama"], v0)
    arrays = S.flat_arrays(model)
    assert not arrays["groups.gated_cross_attn.attn_gate"].any() and not arrays["groups.gated_cross_attn.ff_gate"].any()
    embed = arrays["embed_tokens.embedding"]
    mean = embed[:v0].astype(np.float64).mean(0).astype(np.float32)
    np.testing.assert_array_equal(embed[v0:], np.broadcast_to(mean, (4, embed.shape[1])))
    clip = {k.removeprefix("vision_model."): v for k, v in transformers.CLIPVisionModel.from_pretrained(
        str(bases["root"] / "clip")).state_dict().items()}
    np.testing.assert_array_equal(arrays["vision_encoder.layers.self_attn.q_proj.kernel"][0],
                                  clip["encoder.layers.0.self_attn.q_proj.weight"].numpy().T)
    _check_tokenizer(tmp_path / "init", cfg, v0)


def test_mpt_init_through_the_cli(bases, tmp_path):
    v0 = bases["tok_len"]
    out = tmp_path / "init"
    args = ["init", "--vision", str(bases["root"] / "clip"), "--lm", str(bases["root"] / "mpt"), "--out", str(out),
            "--cross-attn-every", "2", "--perceiver-depth", "1", "--perceiver-heads", "2", "--perceiver-dim-head", "8",
            "--perceiver-num-latents", "4", "--xattn-heads", "3", "--xattn-dim-head", "8", "--seed", "3"]
    with pytest.warns(UserWarning, match=r"transformer\.wte\.weight: rows"):
        assert cli_main(args) == 0
    model, cfg = _text_logits_match(out, bases["mpt"], v0)
    assert cfg.tied_embeddings and cfg.xattn_layer_indices == [1, 3] and cfg.xattn_heads == 3
    _check_tokenizer(out, cfg, v0)


# ------------------------------------------------------------------------------------------------ OpenFlamingo
def _of_pieces(tmp_path, name):
    """Base pieces of an OpenFlamingo fixture: LM dir at the original vocabulary (+ the fixture's tokenizer, which
    already holds OpenFlamingo's tokens) and an open_clip vision file."""
    from openflamingo_helpers import golden_of_dir
    from test_openflamingo import _write_lm, _write_open_clip

    d = golden_of_dir(name)
    lm = _write_lm(tmp_path / f"{name}_lm", name, resized=False)
    for f in (d / "tokenizer").iterdir():
        shutil.copy(f, lm / f.name)
    return d, lm, _write_open_clip(tmp_path / f"{name}_vision.safetensors", name)


def test_init_over_openflamingo_checkpoint(tmp_path):
    from test_openflamingo import _args, _check_outputs

    d, lm, vision = _of_pieces(tmp_path, "of_llama_tiny")
    with pytest.warns(UserWarning) as record:
        cfg = init_builder.build_init(str(vision), str(lm), str(tmp_path / "init"),
                                      openflamingo=str(d / "checkpoint_trainable.safetensors"),
                                      args=_args("of_llama_tiny"))
    messages = [str(w.message) for w in record]
    # The checkpoint provides the OpenFlamingo token rows of the input embedding, but not <answer> (Otter's token),
    # and no lm_head row (OpenFlamingo trains no lm_head): exactly those are named.
    assert len(messages) == 2
    assert messages[0].startswith("model.embed_tokens.weight: rows 83 (<answer>) are in no checkpoint")
    assert messages[1].startswith("lm_head.weight: rows 80..83 (<|endofchunk|>, <image>, <PAD>, <answer>) are in "
                                  "no checkpoint")
    assert cfg.tokens.answer == 83 and cfg.tokens.media == 81 and cfg.text.vocab_size == 84
    model, _ = checkpoint.load_model(str(tmp_path / "init"))
    of_model, _ = OF.load_openflamingo(str(d / "model.safetensors"), str(lm), tokenizer=str(d / "tokenizer"),
                                       args=_args("of_llama_tiny"))
    ours, ref = S.flat_arrays(model), S.flat_arrays(of_model)
    for k in ref:
        if k == "embed_tokens.embedding" or k.startswith("lm_head."):
            np.testing.assert_array_equal(ours[k][..., :80] if k.startswith("lm_head.") else ours[k][:83],
                                          ref[k][..., :80] if k.startswith("lm_head.") else ref[k], err_msg=k)
        else:
            np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
    _check_outputs(model, "of_llama_tiny", columns=80)


# ------------------------------------------------------------------------------------------------ bad input
def _assert_nothing_written(out):
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_missing_lm_directory(bases, tmp_path, capsys):
    out = tmp_path / "init"
    assert cli_main(["init", "--vision", str(bases["root"] / "clip"), "--lm", str(tmp_path / "no_such_lm"),
                     "--out", str(out)]) == 2   # a user mistake: one line on stderr, exit 2
    assert re.search("language model directory .*no_such_lm.* does not exist", capsys.readouterr().err)
    _assert_nothing_written(out)


def test_vision_width_must_match_openflamingo_perceiver(tmp_path):
    from test_openflamingo import _args

    d, lm, _ = _of_pieces(tmp_path, "of_llama_tiny")
    _, _, mpt_vision = _of_pieces(tmp_path, "of_mpt_tiny")
    out = tmp_path / "init"
    with pytest.raises(convert.ConfigError, match="vision tower width 32 does not match the perceiver width 64"):
        init_builder.build_init(str(mpt_vision), str(lm), str(out), args=_args("of_llama_tiny"),
                                openflamingo=str(d / "checkpoint_trainable.safetensors"))
    _assert_nothing_written(out)


def test_openflamingo_checkpoint_of_the_wrong_architecture(bases, tmp_path):
    from openflamingo_helpers import golden_of_dir

    out = tmp_path / "init"
    with pytest.raises(convert.ConfigError, match="wrong architecture: it holds an OpenFlamingo-mpt model, but the "
                                                  "language model directory is 'llama'"):
        init_builder.build_init(str(bases["root"] / "clip"), str(bases["root"] / "llama"), str(out),
                                openflamingo=str(golden_of_dir("of_mpt_tiny") / "checkpoint_trainable.safetensors"))
    _assert_nothing_written(out)

"""Requests -> model inputs (the reference's prompt ids exactly), and the `otter-jax generate` command."""
import json

import numpy as np
import pytest
from PIL import Image

from golden_helpers import golden_case, golden_dir
from otter_jax import generate
from otter_jax.cli import main as cli_main
from otter_jax.generate.requests import Example, Request, answers, load_checkpoint_tokenizer, make_batch


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = d / f"frame_{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _golden_requests(images):
    return [Request(prompt="what color is the car?", images=[images[1]],
                    in_context=[Example(images[0], "what is in the picture?", "a brown dog on the grass.")]),
            Request(prompt="what is the man holding?", images=[images[2]])]


@pytest.mark.parametrize("name", ["otter_llama_tiny", "otter_mpt_tiny"])
def test_prompts_match_reference_ids(golden_model, images, name):
    _, cfg = golden_model(name)
    tok = load_checkpoint_tokenizer(str(golden_dir(name)))
    inputs, _ = golden_case(name, "generate")
    batch = make_batch(_golden_requests(images), tok, image_size=28, pad_id=cfg.tokens.pad)
    np.testing.assert_array_equal(batch["input_ids"], inputs["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], inputs["attention_mask"])
    assert batch["vision_x"].shape == (2, 2, 1, 3, 28, 28)
    assert not batch["vision_x"][1, 1].any()  # row 1 has one media: slot 2 stays empty


def test_cli_single_and_batch_with_resume(tmp_path, images, capsys):
    ckpt = tmp_path / "ckpt"
    assert cli_main(["convert", "--from-torch", str(golden_dir("otter_llama_tiny")), "--out", str(ckpt)]) == 0
    from otter_jax import checkpoint

    model, cfg = checkpoint.load_model(str(ckpt))
    tok = load_checkpoint_tokenizer(str(ckpt))
    reqs = _golden_requests(images) + [Request(prompt="what is on the table?", video=images[:3], id="clip")]
    for i, r in enumerate(reqs[:2]):
        r.id = f"q{i}"
    expected = {}
    for group in (reqs[:2], reqs[2:]):
        batch = make_batch(group, tok, image_size=28, pad_id=cfg.tokens.pad)
        out = generate.generate(model, batch["vision_x"], batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=6)
        expected.update(zip([r.id for r in group], answers(out.sequences, batch["input_ids"].shape[1], tok)))
    assert any(expected.values())

    lines = [{"id": "q0", "prompt": reqs[0].prompt, "images": reqs[0].images,
              "in_context": [{"image": images[0], "question": "what is in the picture?",
                              "answer": "a brown dog on the grass."}]},
             {"id": "q1", "prompt": reqs[1].prompt, "images": reqs[1].images},
             {"id": "clip", "prompt": reqs[2].prompt, "video": str(tmp_path / "no_such_dir")}]
    req_file = tmp_path / "requests.jsonl"
    req_file.write_text("\n".join(json.dumps(x) for x in lines))
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--requests", str(req_file),
                     "--out", str(tmp_path / "a")]) == 2   # a user mistake: one line on stderr, exit 2
    assert "no_such_dir" in capsys.readouterr().err
    lines[2]["video"] = images[:3]
    req_file.write_text("\n".join(json.dumps(x) for x in lines))
    out_file = tmp_path / "answers.jsonl"
    out_file.write_text(json.dumps({"id": "q1", "answer": "kept from an earlier run"}) + "\n")
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--requests", str(req_file), "--out", str(out_file),
                     "--max-new-tokens", "6"]) == 0
    got = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert [g["id"] for g in got].count("q1") == 1 and len(got) == 3
    by_id = {g["id"]: g["answer"] for g in got}
    assert by_id["q1"] == "kept from an earlier run"
    assert by_id["q0"] == expected["q0"] and by_id["clip"] == expected["clip"]


def test_cli_single_request(tmp_path, images, capsys):
    ckpt = tmp_path / "ckpt"
    cli_main(["convert", "--from-torch", str(golden_dir("otter_mpt_tiny")), "--out", str(ckpt)])
    capsys.readouterr()
    assert cli_main(["generate", "--checkpoint", str(ckpt), "--image", images[2], "--prompt",
                     "what is the man holding?", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() != ""

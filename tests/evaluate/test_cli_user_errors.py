"""`otter-jax` user mistakes: one line, exit 2, traceback only with -v; library boilerplate kept off the output."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from otter_jax.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _err_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv,expect", [
    (["data", "build", "--yaml", "{d}/missing.yaml", "--out", "{d}/s"], "missing.yaml: No such file or directory"),
    (["convert", "--from-torch", "{d}/nope", "--out", "{d}/x"], "nope: checkpoint folder does not exist"),
    (["forward", "--from-torch", "{d}/nope", "--inputs", "{d}/x.npz"], "checkpoint folder does not exist"),
    (["train", "--config", "{d}/nope.py"], "nope.py: no such config file"),
])
def test_missing_paths_are_one_line(argv, expect, tmp_path, capsys):
    assert main([a.format(d=tmp_path) for a in argv]) == 2
    err = _err_line(capsys)
    assert err.startswith(f"otter-jax {argv[0]}: error: ") and expect in err and err.count("otter-jax") == 1


def test_not_an_image_is_one_line_and_v_shows_traceback(tiny_checkpoint, tmp_path, capsys):
    fake = tmp_path / "photo.jpg"
    fake.write_text("this is not a JPEG")
    argv = ["generate", "--checkpoint", tiny_checkpoint, "--image", str(fake), "--prompt", "What is it?",
            "--max-new-tokens", "2"]
    assert main(argv) == 2
    err = _err_line(capsys)
    assert err.startswith("otter-jax generate: error: ") and "photo.jpg" in err and "-v shows the traceback" in err
    assert main(argv + ["-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("otter-jax generate")


def test_store_build_output_is_quiet_when_piped(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "TF_CPP", "TRANSFORMERS_VERB"))}
    cmd = [sys.executable, "-m", "otter_jax.cli"]
    subprocess.run(cmd + ["data", "demo", "--out", str(tmp_path / "demo")], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    res = subprocess.run(cmd + ["data", "build", "--yaml", str(tmp_path / "demo" / "demo.yaml"), "--out",
                                str(tmp_path / "store")], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "store: " in res.stdout                                  # our own lines stay
    for noise in ("Downloading and preparing dataset", "downloaded and prepared", "\r", "\x1b[", "Variant folder",
                  "I0000", "oneDNN", "cuda_"):
        assert noise not in out, (noise, out[-1500:])


def test_tokenizer_from_a_checkpoint_folder_loads_without_the_model_type_warning(tmp_path, capfd):
    import shutil

    from otter_jax.data.demo import TOKENIZER_DIR
    from otter_jax.data.tokenizer import load_tokenizer

    ckpt = tmp_path / "ckpt"
    shutil.copytree(TOKENIZER_DIR, ckpt)
    (ckpt / "config.json").write_text('{"model_type": "otter", "text_config": {"model_type": "llama"}}')
    capfd.readouterr()
    assert load_tokenizer(ckpt).convert_tokens_to_ids("<image>") is not None
    assert "model of type" not in capfd.readouterr().err

"""Access to the golden fixtures of the original PyTorch Otter (../shared/golden)."""
import pathlib

import numpy as np
import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
GOLDEN_FIXTURES = ("otter_llama_tiny", "otter_llama_gqa_tiny", "otter_mpt_tiny")


def golden_dir(name: str) -> pathlib.Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden fixtures not found at {GOLDEN} (they ship in the project's shared/ folder)")
    return GOLDEN / name


def golden_case(name: str, case: str) -> tuple[dict, dict]:
    """Inputs and reference outputs of one case; `incontext_train_layout` rebuilds its vision_x as documented."""
    d = golden_dir(name)
    inputs = dict(np.load(d / f"inputs_{case}.npz"))
    outputs = dict(np.load(d / f"outputs_{case}.npz"))
    if "vision_x" not in inputs:
        vx = np.load(d / "inputs_image.npz")["vision_x"]
        inputs["vision_x"] = vx.reshape(vx.shape[0], 1, -1, *vx.shape[3:])
    return inputs, outputs

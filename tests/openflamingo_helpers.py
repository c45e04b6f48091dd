"""Access to the OpenFlamingo golden fixtures of the original PyTorch OpenFlamingo (../shared/golden_openflamingo)."""
import pathlib

import pytest

from golden_helpers import SHARED

GOLDEN_OF = SHARED / "golden_openflamingo"
GOLDEN_OF_FIXTURES = ("of_llama_tiny", "of_mpt_tiny")


def golden_of_dir(name: str) -> pathlib.Path:
    if not GOLDEN_OF.is_dir():
        pytest.skip(f"OpenFlamingo golden fixtures not found at {GOLDEN_OF} (they ship in the project's shared/ "
                    f"folder)")
    return GOLDEN_OF / name

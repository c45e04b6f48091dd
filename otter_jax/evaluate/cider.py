"""CIDEr-D x100 with pycocoevalcap's scorer, after its PTB tokenisation (Java jar, or our Python equivalent)."""
from __future__ import annotations

from typing import Mapping, Sequence

from otter_jax.evaluate import ptb


def cider(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], tokenizer: str = "auto"
          ) -> tuple[float, str]:
    """(corpus CIDEr x100, tokenizer backend used). Document frequencies come from `references`, as in
    pycocoevalcap, so the score is a property of the whole evaluated set, not a mean of independent scores."""
    from pycocoevalcap.cider.cider import Cider

    missing = [k for k in references if k not in predictions]
    if missing:
        raise ValueError(f"CIDEr: no prediction for {len(missing)} example(s), e.g. {missing[0]!r}")
    empty = [k for k, v in references.items() if not v]
    if empty:
        raise ValueError(f"CIDEr: example {empty[0]!r} has no reference captions")
    keys = list(references)
    gts_raw = {k: [{"caption": c} for c in references[k]] for k in keys}
    res_raw = {k: [{"caption": predictions[k]}] for k in keys}
    gts, backend = ptb.tokenize(gts_raw, tokenizer)
    res, _ = ptb.tokenize(res_raw, backend)
    score, _ = Cider().compute_score(gts, res)
    return float(score) * 100.0, backend

"""Shared helpers for the Syphus tests (a unique module name, so it cannot clash with other test trees)."""
import json

from syphus.dispatch import Gen
from syphus.engine import Endpoint
from syphus.retry import RetryPolicy

API_KEY = "sk-test-SECRET-0123456789abcdef"


def endpoint(srv, **kw) -> Endpoint:
    kw.setdefault("retry", RetryPolicy(max_attempts=kw.pop("max_attempts", 6), base_delay=0.01, max_delay=0.05))
    kw.setdefault("timeout", 0.5)
    kw.setdefault("concurrency", 16)
    return Endpoint(base_url=srv.base_url, api_key=API_KEY, progress=False, **kw)


GEN = Gen("fake-model", max_tokens=256)


def dc_annotations(path, n):
    """n dense-caption annotations as JSON Lines."""
    rows = [{"id": f"v{i:04d}", "image_ids": [f"DC_IMG_v{i:04d}_{f:04d}" for f in range(3)],
             "timestamps": [[0, 5], [5, 9 + i % 7]],
             "sentences": [f"Person {i} opens a door.", f"Person {i} waves at the camera {i % 5} times."]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

"""`gs://` served from memory for tests: etils.epath's fsspec backend (instead of tf.io.gfile) over an fsspec
MemoryFileSystem registered as `gs`/`gcs`, so remote paths are exercised with no network. Import the fixture:
`from fake_gcs import fake_gcs`; it yields put(local_folder, "gs://...") copying a local tree in."""
import os
import sys

import pytest


@pytest.fixture
def fake_gcs(monkeypatch):
    from etils import epath
    from etils.epath import gpath
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store, pseudo_dirs = {}, [""]

        def __init__(self, *args, finalize_on_close=None, **kwargs):  # a gcsfs argument epath passes
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            return MemoryFileSystem._strip_protocol(path[len("gs://"):] if path.startswith("gs://") else path)

    registry = sys.modules["fsspec.registry"]._registry  # `fsspec.registry` is its read-only view
    for name in ("gs", "gcs"):
        monkeypatch.setitem(registry, name, FakeGCS)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    FakeGCS.store.clear()

    def put(local, remote: str) -> None:
        for dirpath, _, names in os.walk(local):
            for n in names:
                f = os.path.join(dirpath, n)
                dst = epath.Path(remote) / os.path.relpath(f, local)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(open(f, "rb").read())

    yield put
    FakeGCS.store.clear()

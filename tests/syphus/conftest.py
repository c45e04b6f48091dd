import pytest
from syphus_helpers import API_KEY

from syphus.fake_server import FakeOpenAI


@pytest.fixture
def server():
    """Factory: start a FakeOpenAI on 127.0.0.1 with the given options; all are stopped after the test."""
    started = []

    def make(**kw):
        kw.setdefault("api_key", API_KEY)
        srv = FakeOpenAI(**kw).serve_in_thread()
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()

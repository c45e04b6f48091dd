"""`otter-jax serve` as a real process on 127.0.0.1, driven by the official `openai` client.

One server for the whole module (its shapes are pinned to one bucket each: batch 4, 2 media slots, 16 cache slots
for new tokens, so it compiles one prefill/step pair); the expected answers come from `generate()` in this process, computed while
the server starts. The last test stops the server with SIGTERM.
"""
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from golden_helpers import golden_dir

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-otter-serve"
Q_PLAIN, Q_CTX, A_CTX, Q_VIDEO = "what color is the car?", "what is in the picture?", "a brown dog on the grass.", \
    "what is on the table?"
MAX_NEW = 8  # max_tokens of the requests
BUCKET = 16  # the server's one cache size: a request can join a running batch during its first 8 steps


class Proc:
    def __init__(self, cmd, env):
        self.p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        self.lines, self.url = [], None
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.p.stderr:
            self.lines.append(line)

    def wait_ready(self, timeout=90):
        t0 = time.time()
        while self.url is None:
            for line in self.lines:
                if " on http://" in line:
                    self.url = line.split(" on ")[1].strip()
            assert self.p.poll() is None, "server exited:\n" + "".join(self.lines)
            assert time.time() - t0 < timeout, "server not ready:\n" + "".join(self.lines)
            time.sleep(0.1)
        return self.url


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    from otter_jax.cli import main as cli_main
    assert cli_main(["convert", "--from-torch", str(golden_dir("otter_llama_tiny")), "--out", str(d / "ckpt")]) == 0
    rng = np.random.default_rng(0)
    images = []
    for i in range(5):
        p = d / "media" / f"frame_{i:04d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(p)
        images.append(str(p))
    (d / "keys.txt").write_text(KEY + "\n")
    (d / "outside.png").write_bytes(Path(images[0]).read_bytes())
    return {"dir": d, "ckpt": str(d / "ckpt"), "images": images, "keys": str(d / "keys.txt")}


@pytest.fixture(scope="module")
def proc(files):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "otter_jax.cli", "serve", "--checkpoint", files["ckpt"], "--port", "0",
           "--api-key-file", files["keys"], "--allow-dir", str(files["dir"] / "media"), "--batch-sizes", "4",
           "--media-slots", "2", "--new-token-buckets", str(BUCKET), "--max-images", "6", "--max-body-mb", "1",
           "--batch-wait-ms", "100", "--max-batches", "1", "--warmup"]
    p = Proc(cmd, env)
    yield p
    if p.p.poll() is None:
        p.p.kill()
        p.p.wait()


@pytest.fixture(scope="module")
def expected(files, proc):
    """Greedy answers of `generate()` (loaded as `otter-jax generate` loads), computed while the server starts."""
    from otter_jax import generate
    from otter_jax.generate.cli import load_for_decoding
    from otter_jax.generate.requests import Example, Request, answers, make_batch

    model, cfg, tok, _ = load_for_decoding(files["ckpt"])
    im = files["images"]
    groups = {("plain", "ctx"): [Request(prompt=Q_PLAIN, images=[im[1]]),
                                 Request(prompt=Q_PLAIN, images=[im[1]], in_context=[Example(im[0], Q_CTX, A_CTX)])],
              ("video", "video again"): [Request(prompt=Q_VIDEO, video=im[:3])] * 2}
    out = {}
    for names, reqs in groups.items():
        batch = make_batch(reqs, tok, image_size=cfg.vision.image_size, pad_id=cfg.tokens.pad)
        # one decode program for both groups (test time): the video rows get an empty second media slot, as
        # make_batch gives any row with fewer media; no token attends to it
        vx = batch["vision_x"]
        batch["vision_x"] = np.concatenate([vx, np.zeros_like(vx)], axis=1) if vx.shape[1] == 1 else vx
        seq = generate.generate(model, batch["vision_x"], batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=MAX_NEW).sequences
        out.update(zip(names, answers(seq, batch["input_ids"].shape[1], tok)))
    assert out["plain"] and out["ctx"] and out["video"]
    return out


@pytest.fixture(scope="module")
def client(proc, expected):  # expected first: generate() compiles while the server warms up
    return openai.OpenAI(base_url=proc.wait_ready(), api_key=KEY, max_retries=0, timeout=120)


def data_url(path):
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def user(text, *urls):
    return {"role": "user", "content": [*(image(u) for u in urls), {"type": "text", "text": text}]}


def health(client):
    with urllib.request.urlopen(str(client.base_url).replace("/v1/", "/health"), timeout=10) as r:
        return json.load(r)


def ask(client, messages, **kw):
    r = client.chat.completions.create(model="ckpt", messages=messages, max_tokens=kw.pop("max_tokens", MAX_NEW),
                                       **kw)
    return r.choices[0].message.content


def test_models_and_health(client):
    assert [m.id for m in client.models.list().data] == ["ckpt"]
    assert health(client)["status"] == "ok"


def test_plain_and_streamed_answers_equal_generate(client, files, expected):
    msgs = [user(Q_PLAIN, data_url(files["images"][1]))]
    r = client.chat.completions.create(model="ckpt", messages=msgs, max_tokens=MAX_NEW)
    assert r.choices[0].message.content == expected["plain"]
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model="ckpt", messages=msgs, max_tokens=MAX_NEW, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["plain"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # token by token, not one blob
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [r.choices[0].finish_reason]
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    # a local path under --allow-dir is the same image
    assert ask(client, [user(Q_PLAIN, files["images"][1])]) == expected["plain"]


def test_in_context_turns_equal_generate_and_images_encode_once(client, files, expected):
    im = files["images"]
    msgs = [user(Q_CTX, data_url(im[0])), {"role": "assistant", "content": A_CTX}, user(Q_PLAIN, "file://" + im[1])]
    before = health(client)
    assert ask(client, msgs) == expected["ctx"]
    first = health(client)
    assert ask(client, msgs) == expected["ctx"]
    second = health(client)
    assert first["media_encodes"] - before["media_encodes"] <= 2
    assert second["media_encodes"] == first["media_encodes"]  # both images came from the cache
    assert second["media_cache_hits"] - first["media_cache_hits"] == 2


def test_video_frames_equal_generate(client, files, expected):
    frames = [data_url(p) for p in files["images"][:3]]
    msgs = [{"role": "user", "content": [{"type": "video", "video": {"frames": frames}},
                                         {"type": "text", "text": Q_VIDEO}]}]
    assert ask(client, msgs) == expected["video"]


def test_concurrent_requests_answer_as_sequential_ones(client, files):
    im = files["images"]
    asks = [dict(messages=[user(f"what is in picture {i}?", data_url(im[i % 5]))]) for i in range(5)]
    asks.append(dict(messages=[user("say something without a picture")]))
    asks.append(dict(messages=[user(Q_CTX, data_url(im[2])), {"role": "assistant", "content": A_CTX},
                               user(Q_PLAIN, data_url(im[3]))]))
    asks.append(dict(messages=[user(Q_PLAIN, data_url(im[4]))], temperature=0.9, top_p=0.9, seed=7))
    sequential = [ask(client, **a) for a in asks]
    before = health(client)
    with ThreadPoolExecutor(len(asks)) as pool:
        concurrent = list(pool.map(lambda a: ask(client, **a), asks))
    after = health(client)
    assert concurrent == sequential
    # 4 rows and one batch at a time (--max-batches 1): the other requests joined rows that had finished
    assert after["joined"] > before["joined"]
    # one compiled shape for every prompt length, batch size and media count seen so far
    assert [tuple(s) for s in after["compiled_shapes"]] == [(4, 64, 2, BUCKET)]


def test_n_stop_and_length(client, files, expected):
    msgs = [user(Q_PLAIN, data_url(files["images"][1]))]
    r = client.chat.completions.create(model="ckpt", messages=msgs, max_tokens=MAX_NEW, n=2)
    assert [c.message.content for c in r.choices] == [expected["plain"]] * 2
    words = expected["plain"].split(" ")
    assert len(words) >= 2
    r = client.chat.completions.create(model="ckpt", messages=msgs, max_tokens=MAX_NEW, stop=[" " + words[1]])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (words[0], "stop")
    chunks = list(client.chat.completions.create(model="ckpt", messages=msgs, max_tokens=MAX_NEW,
                                                 stop=[" " + words[1]], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == words[0]  # nothing past the stop leaked
    r = client.chat.completions.create(model="ckpt", messages=msgs, max_tokens=1)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 1
    assert r.choices[0].message.content == words[0]


def _post(client, body: bytes, key=KEY):
    req = urllib.request.Request(str(client.base_url) + "chat/completions", data=body,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_bad_requests_are_400_and_the_server_keeps_answering(client, files, expected):
    im = files["images"]
    good = user(Q_PLAIN, data_url(im[1]))
    not_image = "data:image/png;base64," + base64.b64encode(b"this is not a picture").decode()
    bad = {
        "corrupt base64": dict(messages=[user("q", "data:image/png;base64,@@not base64@@")]),
        "not an image": dict(messages=[user("q", not_image)]),
        "unknown role": dict(messages=[{"role": "wizard", "content": "q"}]),
        "temperature": dict(messages=[good], temperature=7),
        "max_tokens 0": dict(messages=[good], max_tokens=0),
        "max_tokens over the limit": dict(messages=[good], max_tokens=BUCKET + 1),
        "n": dict(messages=[good], n=50),
        "too many images": dict(messages=[user("q", *[data_url(im[0])] * 7)]),
        "remote url": dict(messages=[user("q", "http://example.com/a.png")]),
        "outside allow-dir": dict(messages=[user("q", str(files["dir"] / "outside.png"))]),
        "relative escape": dict(messages=[user("q", str(files["dir"] / "media" / ".." / "outside.png"))]),
        "unknown part": dict(messages=[{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]),
        "ends with assistant": dict(messages=[good, {"role": "assistant", "content": "x"}]),
        "empty messages": dict(messages=[]),
        "too many frames": dict(messages=[{"role": "user", "content": [
            {"type": "video", "video": {"frames": [data_url(im[0])] * 5}}]}]),
        "stop": dict(messages=[good], stop=[""]),
    }
    for name, kw in bad.items():
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="ckpt", max_tokens=kw.pop("max_tokens", 4), **kw)
        err = e.value.body
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error", name
        assert health(client)["status"] == "ok", name
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[good], max_tokens=4)
    assert _post(client, b"{not json")[0] == 400
    status, body = _post(client, json.dumps({"messages": [user("q", "data:image/png;base64," + "A" * (2 << 20))]})
                         .encode())
    assert status == 413 and body["error"]["code"] == "body_too_large"
    for key in ("", "sk-wrong"):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=client.base_url, api_key=key or "x", max_retries=0,
                          default_headers={} if key else {"Authorization": ""}).models.list()
        assert _post(client, json.dumps({"messages": [good]}).encode(), key=key)[0] == 401
    assert ask(client, [good]) == expected["plain"]


def test_syphus_run_against_the_server(client, files, tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("code: TINY\nname: tiny\nreader: dense_captions\ngroup: VIDEO_TEXT\n"
                    "system: Write one question and its answer about the video.\n")
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"id": "v0", "image_ids": ["DC_IMG_v0_0000"], "timestamps": [[0, 5]],
                               "sentences": ["a person opens a door."]}) + "\n")
    before = health(client)
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "syphus.cli", "run", "--task", str(spec), "--annotations", str(ann),
                          "--out", str(tmp_path / "out"), "--base-url", str(client.base_url), "--model", "ckpt",
                          "--text-output", "--max-tokens", str(MAX_NEW), "--max-attempts", "1", "--concurrency", "1",
                          "--allow-failures", "--no-progress"], env=env, capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "out" / "TINY_meta.json").read_text())
    assert meta["failed_requests"] == 0 and meta["pending_requests"] == 0  # answered over HTTP 200
    assert meta["instructions"] + meta["invalid_responses"] >= 1  # the tiny model's words need not parse as Q/A
    assert meta["accounting"]["completion_tokens"] >= 1
    assert health(client)["requests"] > before["requests"]


def test_sigterm_finishes_in_flight_requests_and_exits_0(client, proc, files):
    msgs = [user(Q_PLAIN, data_url(files["images"][1]))]
    stream = client.chat.completions.create(model="ckpt", messages=msgs, max_tokens=MAX_NEW, stream=True)
    first = next(iter(stream))
    proc.p.send_signal(signal.SIGTERM)
    rest = list(stream)
    assert first.choices[0].delta.role == "assistant"
    assert rest and rest[-1].choices[0].finish_reason in ("stop", "length")
    assert proc.p.wait(timeout=60) == 0
    assert any("shutting down" in line for line in proc.lines)

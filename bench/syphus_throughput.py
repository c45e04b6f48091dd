"""Completed requests/s against the local fake OpenAI server (100 ms per request): Syphus vs the upstream pattern.

Upstream Syphus sends 8 requests at a time from a thread pool and waits for the whole batch before the next
one (lockstep), through the synchronous OpenAI client. Syphus runs a bounded pool of async workers over one
aiohttp session and journals every answer to SQLite (that cost is included). The server runs in its own
process so the client under test has a core to itself.

Three comparisons, so the headline ratio is not just "more requests in flight":
  1. as shipped: upstream's 8 lockstep threads vs Syphus at its default-sized --concurrency;
  2. equal concurrency C (each of --equal): upstream's lockstep pattern widened to C threads vs Syphus at C;
  3. equal concurrency C: plain `openai.AsyncOpenAI` with C workers (no journal, no retries) vs Syphus at C,
     i.e. what our client and journal cost or gain over the obvious async code.

    .venv/bin/python bench/syphus_throughput.py [--requests 4000] [--concurrency 512] [--upstream-requests 240]
                                                [--equal 8,64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from syphus.dispatch import Gen, run_async  # noqa: E402
from syphus.engine import Endpoint, send_all  # noqa: E402
from syphus.journal import Journal, request_key  # noqa: E402
from syphus.retry import RetryPolicy  # noqa: E402


def bodies(n: int, tag: str) -> list[dict]:
    gen = Gen("bench-model", max_tokens=256)
    return [gen.body([{"role": "system", "content": "You write questions about videos."},
                      {"role": "user", "content": f"{tag} clip {i}: a person opens a door and waves."}])
            for i in range(n)]


def ours(base_url: str, n: int, concurrency: int, tag: str = "ours") -> float:
    with tempfile.TemporaryDirectory() as d:
        j = Journal(Path(d) / "journal.sqlite")
        todo = [(request_key(b), b) for b in bodies(n, tag)]
        j.add_many("bench", [(k, i, b, {}) for i, (k, b) in enumerate(todo)])
        ep = Endpoint(base_url, api_key="bench", concurrency=concurrency, timeout=30, progress=False,
                      retry=RetryPolicy(max_attempts=3))
        stats = run_async(send_all(j, j.todo("bench"), ep))
        j.close()
    assert stats.done == n, f"ours: only {stats.done}/{n} done"
    return stats.done / stats.seconds


def upstream(base_url: str, n: int, threads: int = 8, tag: str = "upstream") -> float:
    """The upstream pattern: `threads` requests at a time, waiting for the whole batch (lockstep)."""
    import openai
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=30)
    todo = bodies(n, tag)
    done = 0
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for i in range(0, n, threads):
            futures = [pool.submit(client.chat.completions.create, **b) for b in todo[i: i + threads]]
            done += sum(1 for f in futures if f.result().choices[0].message.content)
    return done / (time.perf_counter() - t0)


def plain_async_openai(base_url: str, n: int, concurrency: int, tag: str) -> float:
    """The obvious async client: AsyncOpenAI and `concurrency` workers pulling from a queue, nothing journaled."""
    import asyncio

    import openai

    async def go():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=30)
        queue: asyncio.Queue = asyncio.Queue()
        for b in bodies(n, tag):
            queue.put_nowait(b)
        done = 0

        async def worker():
            nonlocal done
            while not queue.empty():
                b = queue.get_nowait()
                r = await client.chat.completions.create(**b)
                done += bool(r.choices[0].message.content)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        dt = time.perf_counter() - t0
        await client.close()
        return done / dt

    return asyncio.run(go())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--upstream-requests", type=int, default=240)
    p.add_argument("--concurrency", type=int, default=512)
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--equal", default="8,64", help="concurrency levels for the equal-concurrency comparisons")
    p.add_argument("--equal-requests-per-slot", type=int, default=20,
                   help="requests per unit of concurrency in the equal-concurrency runs (>= 100 in all)")
    a = p.parse_args(argv)
    levels = [int(x) for x in a.equal.split(",") if x.strip()]
    equal = []
    with tempfile.TemporaryDirectory() as d:
        port_file = Path(d) / "port"
        srv = subprocess.Popen([sys.executable, "-m", "syphus.fake_server", "--latency", str(a.latency),
                                "--port-file", str(port_file)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.time() + 30
            while not port_file.exists():
                if time.time() > deadline or srv.poll() is not None:
                    raise SystemExit("fake server did not start")
                time.sleep(0.05)
            base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"
            up = upstream(base_url, a.upstream_requests)
            us = ours(base_url, a.requests, a.concurrency)
            for c in levels:
                n = max(100, c * a.equal_requests_per_slot)
                equal.append({"concurrency": c, "requests": n,
                              "upstream_lockstep_req_per_s": round(upstream(base_url, n, c, f"up{c}"), 1),
                              "async_openai_req_per_s": round(plain_async_openai(base_url, n, c, f"ao{c}"), 1),
                              "syphus_req_per_s": round(ours(base_url, n, c, f"us{c}"), 1)})
        finally:
            srv.terminate()
            srv.wait(10)
    result = {"latency_s": a.latency, "upstream_8_threads_lockstep_req_per_s": round(up, 1),
              "syphus_req_per_s": round(us, 1), "speedup": round(us / up, 1),
              "syphus_requests": a.requests, "syphus_concurrency": a.concurrency, "cpus": os.cpu_count(),
              "equal_concurrency": equal}
    print(f"as shipped: upstream pattern (8 threads, lockstep): {up:8.1f} req/s")
    print(f"as shipped: syphus (async, concurrency {a.concurrency}):     {us:8.1f} req/s")
    print(f"ratio: {us / up:.1f}x (goal >= 20x; most of it is concurrency, see below)")
    print(f"ideal at concurrency C: C / latency = C x {1 / a.latency:g} req/s")
    for e in equal:
        c, s_, u, o = e["concurrency"], e["syphus_req_per_s"], e["upstream_lockstep_req_per_s"], e[
            "async_openai_req_per_s"]
        print(f"equal concurrency {c:4d}: upstream lockstep {u:8.1f}  AsyncOpenAI {o:8.1f}  syphus {s_:8.1f} req/s"
              f"  (syphus/upstream {s_ / u:.2f}x, syphus/AsyncOpenAI {s_ / o:.2f}x)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""A small OpenAI-compatible HTTP server with deterministic answers and fault injection.

Why it ships in the package: the tests, the throughput benchmark and users smoke-testing a pipeline offline
(`python -m syphus.fake_server --port 8000`) all need an endpoint that answers instantly, identically for the
same request, and misbehaves on purpose (429 with Retry-After, 5xx, slow past the timeout, malformed JSON,
truncated bodies, connection resets, model-side truncation). Raw asyncio HTTP/1.1 keeps it dependency-free
and lets a fault break the connection in ways a framework would hide. Supports chat completions plus the
files and batches endpoints the Batch API mode uses.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.parser
import hashlib
import json
import os
import random
import re
import socket
import struct
import threading

from syphus.journal import request_key

FAULTS = ("429", "500", "503", "slow", "malformed", "truncated", "reset", "length")
LANGS = ("zh", "es", "ja", "de", "fr", "ko", "ar")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _schema_name(body: dict) -> str | None:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return rf["json_schema"]["name"]
    system = " ".join(m["content"] for m in body["messages"] if m["role"] == "system"
                      and isinstance(m["content"], str))
    m = re.search(r"\(json schema: (\w+)\)", system)
    return m.group(1) if m else None


def default_answer(body: dict) -> str:
    """Deterministic content derived from the request; the shape follows the requested JSON schema."""
    query = body["messages"][-1]["content"]
    if isinstance(query, list):
        query = " ".join(p.get("text", "") for p in query)
    h = _digest(json.dumps(body["messages"], sort_keys=True))
    name = _schema_name(body)
    snippet = " ".join(query.split()[:8])
    if name == "translation":
        a = re.search(r"<a>(.*?)</a>", query, re.S)
        b = re.search(r"<b>(.*?)</b>", query, re.S)
        a, b = (a.group(1) if a else ""), (b.group(1) if b else "")
        return json.dumps({"a": {k: f"[{k}] {a}" for k in LANGS}, "b": {k: f"[{k}] {b}" for k in LANGS}},
                          ensure_ascii=False)
    if name == "instruction_list":
        lines = [ln.strip("-* ").strip() for ln in query.splitlines() if ln.strip().startswith("-")]
        out = []
        for ln in lines or [snippet]:
            out += [ln, f"{ln} Explain in detail.", f"Write a short poem about: {ln}"]
        return json.dumps({"instructions": out})
    if name == "verdict":
        return json.dumps({"ok": int(h[0], 16) % 4 != 0, "reason": f"check {h[:6]}"})
    if name == "plain_answer":
        return json.dumps({"answer": f"Grounded answer {h[:8]} to: {snippet}"})
    n = 1 + int(h[0], 16) % 3
    pairs = [{"question": f"Q{i + 1} {h[:6]} about {snippet}?", "answer": f"A{i + 1} {h[6:12]}."} for i in range(n)]
    if name == "qa_pairs":
        return json.dumps({"pairs": pairs})
    return "".join(f"Question: {p['question']}\nAnswer: {p['answer']}\n\n" for p in pairs)


class FakeOpenAI:
    """Server state: config, counters and the asyncio server. Use `serve_in_thread()` from synchronous code."""

    def __init__(self, latency: float = 0.0, fault_rate: float = 0.0, faults=FAULTS, seed: int = 0,
                 slow_s: float = 1.0, retry_after_ms: int = 20, api_key: str | None = None,
                 poison: str | None = None, answer=default_answer, full_answer_tokens: int | None = None):
        self.latency, self.fault_rate, self.faults, self.seed = latency, fault_rate, tuple(faults), seed
        self.slow_s, self.retry_after_ms, self.api_key, self.poison, self.answer = (
            slow_s, retry_after_ms, api_key, poison, answer)
        # when set, requests whose max_tokens is below it get a cut answer with finish_reason=length
        self.full_answer_tokens = full_answer_tokens
        self.seen = collections.Counter()       # request key -> times received
        self.answered = collections.Counter()   # request key -> complete 200 answers sent
        self.fault_counts = collections.Counter()
        self.unauthorized = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.port: int | None = None
        self._server = None
        self._loop = None

    # ---- HTTP plumbing --------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._conn, host, port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if not await self._handle(method, path, headers, body, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _send(writer, status: int, payload: bytes, ctype="application/json", extra=None, declared_len=None):
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "X")
        hdr = [f"HTTP/1.1 {status} {reason}", f"content-type: {ctype}",
               f"content-length: {declared_len if declared_len is not None else len(payload)}"]
        hdr += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(hdr) + "\r\n\r\n").encode() + payload)

    def _json(self, writer, status, obj, extra=None):
        self._send(writer, status, json.dumps(obj).encode(), extra=extra)

    async def _handle(self, method, path, headers, body, writer) -> bool:
        """Returns False when the connection must be dropped."""
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            self.unauthorized += 1
            self._json(writer, 401, {"error": {"message": "bad api key", "type": "auth"}})
            return True
        path = path.split("?")[0]
        if method == "POST" and path.endswith("/chat/completions"):
            return await self._chat(json.loads(body), writer)
        if method == "POST" and path.endswith("/files"):
            return self._upload(headers, body, writer)
        if method == "POST" and path.endswith("/batches"):
            return self._create_batch(json.loads(body), writer)
        m = re.search(r"/batches/([\w-]+)$", path)
        if method == "GET" and m and m.group(1) in self.batches:
            self._json(writer, 200, self._poll_batch(m.group(1)))
            return True
        m = re.search(r"/files/([\w-]+)/content$", path)
        if method == "GET" and m and m.group(1) in self.files:
            self._send(writer, 200, self.files[m.group(1)], ctype="application/octet-stream")
            return True
        self._json(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        return True

    # ---- chat completions -----------------------------------------------------------------------------------
    def _completion(self, body: dict, key: str, truncate: bool = False) -> dict:
        content = self.answer(body)
        finish = "stop"
        if truncate:
            content, finish = content[: len(content) // 2], "length"
        prompt_chars = sum(len(m["content"]) if isinstance(m["content"], str) else 0 for m in body["messages"])
        usage = {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": len(content) // 4 + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"chatcmpl-{key[:12]}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": content}}], "usage": usage}

    def _pick_fault(self, key: str, body: dict) -> str | None:
        if self.poison and self.poison in json.dumps(body["messages"]):
            return "500"
        rng = random.Random(f"{self.seed}:{key}:{self.seen[key]}")
        if self.fault_rate and rng.random() < self.fault_rate:
            return rng.choice(self.faults)
        return None

    async def _chat(self, body: dict, writer) -> bool:
        key = request_key(body)
        fault = self._pick_fault(key, body)
        self.seen[key] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault:
            self.fault_counts[fault] += 1
        if fault == "429":
            self._json(writer, 429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                       extra={"retry-after-ms": str(self.retry_after_ms),
                              "retry-after": str(max(1, self.retry_after_ms // 1000))})
        elif fault in ("500", "503"):
            self._json(writer, int(fault), {"error": {"message": f"injected {fault}", "type": "server_error"}})
        elif fault == "slow":
            await asyncio.sleep(self.slow_s)
            return False
        elif fault == "malformed":
            self._send(writer, 200, b'{"id": "chatcmpl-x", "choices": [{"message": ')
        elif fault == "truncated":
            full = json.dumps(self._completion(body, key)).encode()
            self._send(writer, 200, full[: len(full) // 2], declared_len=len(full))
            await writer.drain()
            return False
        elif fault == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        else:
            short = self.full_answer_tokens is not None and int(body.get("max_tokens") or 0) < self.full_answer_tokens
            self._json(writer, 200, self._completion(body, key, truncate=fault == "length" or short))
            self.answered[key] += 1
        await writer.drain()
        return True

    # ---- files and batches (OpenAI Batch API subset) --------------------------------------------------------
    def _upload(self, headers, body, writer) -> bool:
        msg = email.parser.BytesParser().parsebytes(
            f"content-type: {headers['content-type']}\r\n\r\n".encode() + body)
        data = next(p.get_payload(decode=True) for p in msg.get_payload() if p.get_param("name", header="content-disposition") == "file")
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = data
        self._json(writer, 200, {"id": fid, "object": "file", "bytes": len(data), "created_at": 0,
                                 "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})
        return True

    def _create_batch(self, req, writer) -> bool:
        bid = f"batch-{len(self.batches) + 1}"
        self.batches[bid] = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "input_file_id":
                             req["input_file_id"], "completion_window": req["completion_window"], "created_at": 0,
                             "status": "validating", "output_file_id": None, "error_file_id": None, "polls": 0}
        self._json(writer, 200, self._public(self.batches[bid]))
        return True

    @staticmethod
    def _public(b):
        return {k: v for k, v in b.items() if k != "polls"}

    def _poll_batch(self, bid: str) -> dict:
        """First poll reports in_progress; the second runs every line and completes."""
        b = self.batches[bid]
        b["polls"] += 1
        if b["status"] == "validating":
            b["status"] = "in_progress"
        elif b["status"] == "in_progress":
            out, err = [], []
            for line in self.files[b["input_file_id"]].decode().splitlines():
                item = json.loads(line)
                body, key = item["body"], request_key(item["body"])
                self.seen[key] += 1
                if self.poison and self.poison in json.dumps(body["messages"]):
                    err.append({"id": f"r-{key[:8]}", "custom_id": item["custom_id"], "response": None,
                                "error": {"code": "server_error", "message": "injected failure"}})
                    continue
                self.answered[key] += 1
                short = self.full_answer_tokens is not None and int(body.get("max_tokens") or 0) < self.full_answer_tokens
                out.append({"id": f"r-{key[:8]}", "custom_id": item["custom_id"], "error": None,
                            "response": {"status_code": 200, "body": self._completion(body, key, truncate=short)}})
            for name, rows in (("output_file_id", out), ("error_file_id", err)):
                if rows:
                    fid = f"file-{len(self.files) + 1}"
                    self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                    b[name] = fid
            b["status"] = "completed"
        return self._public(b)

    # ---- running --------------------------------------------------------------------------------------------
    def serve_in_thread(self) -> "FakeOpenAI":
        """Start on a background event loop; returns self with `.port` set. Call `stop()` when done."""
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake server did not start within 10 s")
        return self

    def stop(self):
        """Cancel open connections, close the listener and end the background loop."""
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every chat completion")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    async def run():
        srv = FakeOpenAI(latency=a.latency, fault_rate=a.fault_rate, seed=a.seed)
        port = await srv.start(a.host, a.port)
        if a.port_file:
            with open(a.port_file + ".tmp", "w") as fh:
                fh.write(str(port))
            os.replace(a.port_file + ".tmp", a.port_file)
        print(f"fake OpenAI server on http://{a.host}:{port}/v1", flush=True)
        await asyncio.Event().wait()

    from syphus.dispatch import run_async
    run_async(run())


if __name__ == "__main__":
    main()

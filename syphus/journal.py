"""Persistent SQLite journal: the single source of truth that makes runs resumable and exactly-once.

Every request is keyed by a hash of what decides its answer (model, messages, sampling params), never the API
key or endpoint credentials. A request row moves pending -> done | failed; a done row holds the raw response and
its token counts, so a rerun or a resume after SIGKILL never pays for it again. Items (one annotation, one
translation, one MM-Instruct candidate) point at a request key; outputs are a pure function of the journal, so
they are rebuilt, never appended, and cannot be duplicated. WAL mode with one commit per finished request keeps
at most the in-flight requests at risk when the process dies.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

KEY_FIELDS = ("model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
              "response_format", "seed", "stop", "n", "presence_penalty", "frequency_penalty")


def request_key(body: dict) -> str:
    """sha256 over the answer-deciding fields of a chat-completions body (canonical JSON)."""
    canon = {k: body[k] for k in KEY_FIELDS if k in body}
    return hashlib.sha256(json.dumps(canon, sort_keys=True, ensure_ascii=False,
                                     separators=(",", ":")).encode()).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests(
  key TEXT PRIMARY KEY, task TEXT NOT NULL, body TEXT NOT NULL,
  status TEXT NOT NULL CHECK(status IN ('pending', 'done', 'failed')),
  attempts INTEGER NOT NULL DEFAULT 0, error TEXT, response TEXT, finish_reason TEXT,
  prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
  cost REAL NOT NULL DEFAULT 0, batch_id TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS items(
  task TEXT NOT NULL, item_id TEXT NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, meta TEXT NOT NULL,
  PRIMARY KEY(task, item_id));
CREATE TABLE IF NOT EXISTS batches(
  batch_id TEXT PRIMARY KEY, task TEXT NOT NULL, input_file_id TEXT, status TEXT, created REAL);
CREATE INDEX IF NOT EXISTS requests_status ON requests(task, status);
"""


JOURNAL_NAME = "journal.sqlite"  # one journal per output folder


@dataclass
class Outcome:
    """What one request ended with."""
    status: str                  # 'done' or 'failed'
    attempts: int
    response: str | None = None  # assistant message content
    finish_reason: str | None = None
    error: str | None = None     # failure reason: last error class and message
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self):
        self.db.close()

    # ---- registering work -----------------------------------------------------------------------------------
    def add(self, task: str, item_id: str, seq: int, body: dict, meta: dict) -> str:
        """Point an item at its request, creating the request as pending if it is new. Returns the key."""
        key = request_key(body)
        self.db.execute("INSERT OR IGNORE INTO requests(key, task, body, status, updated) VALUES (?,?,?,?,?)",
                        (key, task, json.dumps(body, ensure_ascii=False), "pending", time.time()))
        self.db.execute("INSERT OR REPLACE INTO items(task, item_id, seq, key, meta) VALUES (?,?,?,?,?)",
                        (task, item_id, seq, key, json.dumps(meta, ensure_ascii=False)))
        return key

    def add_many(self, task: str, entries) -> list[str]:
        """`entries`: iterable of (item_id, seq, body, meta); one transaction for speed."""
        self.db.execute("BEGIN")
        try:
            keys = [self.add(task, *e) for e in entries]
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return keys

    def todo(self, task: str, retry_failed: bool = True) -> list[tuple[str, dict]]:
        """Requests of this task still to send (pending, and failed ones unless told otherwise), not in a batch."""
        states = ("pending", "failed") if retry_failed else ("pending",)
        rows = self.db.execute(
            f"SELECT DISTINCT r.key, r.body FROM requests r JOIN items i ON i.key = r.key WHERE i.task = ? AND "
            f"r.status IN ({','.join('?' * len(states))}) AND r.batch_id IS NULL ORDER BY i.seq",
            (task, *states)).fetchall()
        return [(k, json.loads(b)) for k, b in rows]

    # ---- recording results ----------------------------------------------------------------------------------
    def record(self, key: str, o: Outcome) -> None:
        """Store a finished request. A done row is never overwritten (first answer wins, nothing is re-paid)."""
        self.db.execute(
            "UPDATE requests SET status=?, attempts=attempts+?, error=?, response=?, finish_reason=?, "
            "prompt_tokens=prompt_tokens+?, completion_tokens=completion_tokens+?, cost=cost+?, batch_id=NULL, "
            "updated=? WHERE key=? AND status != 'done'",
            (o.status, o.attempts, o.error, o.response, o.finish_reason, o.prompt_tokens, o.completion_tokens,
             o.cost, time.time(), key))

    def hold_cut(self, key: str, o: Outcome) -> None:
        """Keep a batch answer cut by max_tokens (its tokens and cost counted) while it stays pending, so a
        follow-up batch with a larger budget, or a resumed run, asks it once more instead of recording it."""
        self.record(key, Outcome("pending", o.attempts, o.response, "length", None, o.prompt_tokens,
                                 o.completion_tokens, o.cost))

    def held_cuts(self, task: str) -> dict[str, str]:
        """key -> cut answer for this task's requests held by `hold_cut` and not asked again yet."""
        return dict(self.db.execute(
            "SELECT DISTINCT r.key, r.response FROM requests r JOIN items i ON i.key = r.key WHERE i.task=? AND "
            "r.status='pending' AND r.finish_reason='length' AND r.response IS NOT NULL", (task,)).fetchall())

    def body(self, key: str) -> dict:
        return json.loads(self.db.execute("SELECT body FROM requests WHERE key=?", (key,)).fetchone()[0])

    def status_of(self, key: str) -> str | None:
        row = self.db.execute("SELECT status FROM requests WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    # ---- batches --------------------------------------------------------------------------------------------
    def open_batches(self, task: str) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT batch_id FROM batches WHERE task=? AND status NOT IN ('completed','failed','expired',"
            "'cancelled','collected')", (task,))]

    def start_batch(self, task: str, batch_id: str, input_file_id: str, keys: list[str]) -> None:
        self.db.execute("BEGIN")
        self.db.execute("INSERT INTO batches VALUES (?,?,?,?,?)", (batch_id, task, input_file_id, "submitted",
                                                                    time.time()))
        self.db.executemany("UPDATE requests SET batch_id=? WHERE key=?", [(batch_id, k) for k in keys])
        self.db.execute("COMMIT")

    def set_batch_status(self, batch_id: str, status: str) -> None:
        self.db.execute("UPDATE batches SET status=? WHERE batch_id=?", (status, batch_id))

    def release_batch(self, batch_id: str) -> None:
        """Requests of a finished batch that got no line back become sendable again."""
        self.db.execute("UPDATE requests SET batch_id=NULL WHERE batch_id=?", (batch_id,))

    # ---- reading back ---------------------------------------------------------------------------------------
    def items(self, task: str):
        """(item_id, meta, status, response, finish_reason, error) in input order."""
        rows = self.db.execute(
            "SELECT i.item_id, i.meta, r.status, r.response, r.finish_reason, r.error FROM items i "
            "JOIN requests r ON r.key = i.key WHERE i.task=? ORDER BY i.seq", (task,))
        for item_id, meta, status, response, finish, error in rows:
            yield item_id, json.loads(meta), status, response, finish, error

    def tasks(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT task FROM items ORDER BY task")]

    def accounting(self) -> dict[str, dict]:
        """Per task: request counts by status, attempts, tokens and cost."""
        out = {}
        for task, status, n, att, pt, ct, cost in self.db.execute(
                "SELECT task, status, COUNT(*), SUM(attempts), SUM(prompt_tokens), SUM(completion_tokens), "
                "SUM(cost) FROM requests GROUP BY task, status"):
            t = out.setdefault(task, {"pending": 0, "done": 0, "failed": 0, "attempts": 0, "prompt_tokens": 0,
                                      "completion_tokens": 0, "cost_usd": 0.0})
            t[status] = n
            t["attempts"] += att or 0
            t["prompt_tokens"] += pt or 0
            t["completion_tokens"] += ct or 0
            t["cost_usd"] = round(t["cost_usd"] + (cost or 0.0), 6)
        return out

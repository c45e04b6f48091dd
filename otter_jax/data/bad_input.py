"""Bad-input policy shared by ingestion and the loader: strict raises, lenient skips and counts.

One exception type carries the reason, the record id and the file, so a strict failure always says where to look,
and lenient mode can count by reason without parsing messages.
"""
from __future__ import annotations

import collections
import logging

# Every reason a record can be rejected for; counts are reported under these names.
REASONS = (
    "corrupt_base64",      # image payload is not valid base64
    "bad_image",           # bytes that PIL cannot open or fully decode (undecodable, truncated)
    "missing_image",       # an instruction names an image id that no images file holds
    "dangling_context",    # an in-context id that names no instruction
    "empty_text",          # empty instruction or answer
    "bad_utf8",            # text that is not valid UTF-8
    "duplicate_id",        # the same id twice with different content
    "too_long",            # query chunk alone exceeds max_seq_len even after dropping every in-context chunk
    "too_many_media",      # query chunk alone has more images than max_media
    "bad_record",          # a TFRecord example that does not fit the schema
    "pack_overflow",       # packing: an episode that did not fit its row after the ones before it (loader only)
)


class BadRecord(ValueError):
    """A record that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, record_id: str, file: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason, self.record_id, self.file, self.detail = reason, record_id, file, detail
        super().__init__(f"{reason}: record {record_id!r} in {file}" + (f": {detail}" if detail else ""))


class SkipCounter:
    """Counts skipped records by reason (lenient mode) or re-raises them (strict mode)."""

    def __init__(self, strict: bool, what: str = "records"):
        self.strict, self.what = strict, what
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}  # reason -> first message, to make reports actionable

    def skip(self, err: BadRecord) -> None:
        if self.strict:
            raise err
        self.counts[err.reason] += 1
        self.examples.setdefault(err.reason, str(err))

    def merge(self, counts: dict[str, int]) -> None:
        self.counts.update({k: int(v) for k, v in counts.items() if v})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        if not self.counts:
            return f"skipped 0 {self.what}"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        first = "; ".join(self.examples[k] for k in sorted(self.examples))
        return f"skipped {self.total} {self.what} ({parts})" + (f"; first of each: {first}" if first else "")

    def log(self, logger: logging.Logger = logging.getLogger(__name__)) -> None:
        (logger.warning if self.counts else logger.info)(self.report())

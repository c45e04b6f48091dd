"""The one record shape every task reader produces, and what a reader returns."""
from __future__ import annotations

import dataclasses
from typing import Callable


class DataError(ValueError):
    """A benchmark file that cannot be read as its format says (names the file and the record)."""


@dataclasses.dataclass(frozen=True)
class Example:
    id: str                           # unique within the task; the resume key
    images: tuple[str, ...]           # keys for TaskData.read_image (usually file paths); () = text only
    question: str = ""                # the instruction (without few-shot context)
    answers: tuple[str, ...] = ()     # reference captions / human answers / gold label / baseline answer
    options: tuple[str, ...] = ()     # multiple-choice option texts
    gold: int = -1                    # multiple choice: index of the right option
    meta: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)  # task, category, split...


@dataclasses.dataclass
class TaskData:
    examples: list[Example]
    pool: list[Example]               # few-shot demonstrations (train split); empty where the benchmark has none
    read_image: Callable[[str], bytes]
    source: str                       # the file(s) read, for error messages and the report


def read_file_bytes(path: str) -> bytes:
    """An image's bytes, through etils.epath so image folders may be on gs://."""
    from etils import epath

    try:
        return epath.Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from None

"""Prompt specs: one YAML file per task (system message + in-context examples), rendered into chat messages.

Built-in specs live in syphus/prompts/<CODE>.yaml; users add a task by dropping a YAML file with the same keys
somewhere and passing its path (or a --prompts-dir). Keys: code, name, reader, group, system, examples (each
`user` annotation text and `pairs` of {question, answer}). Cold start appends reviewed examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from syphus.parse import QA_SCHEMA, json_instruction, render_pairs
from syphus.schema import GROUPS

BUILTIN_DIR = Path(__file__).parent / "prompts"

TEXT_FORMAT_NOTE = ("Write every pair as two lines, 'Question: ...' then 'Answer: ...', "
                    "with a blank line between pairs and nothing else.")


class PromptError(ValueError):
    pass


@dataclass
class PromptSpec:
    code: str
    name: str
    reader: str
    group: str
    system: str
    examples: list[dict] = field(default_factory=list)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> "PromptSpec":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise PromptError(f"{path}: cannot read prompt spec: {e}") from None
        if not isinstance(data, dict):
            raise PromptError(f"{path}: prompt spec must be a mapping")
        missing = [k for k in ("code", "name", "reader", "group", "system") if not data.get(k)]
        if missing:
            raise PromptError(f"{path}: missing key(s) {missing}")
        if data["group"] not in GROUPS:
            raise PromptError(f"{path}: group {data['group']!r} is not one of {GROUPS}")
        examples = data.get("examples") or []
        for i, ex in enumerate(examples):
            pairs = ex.get("pairs") if isinstance(ex, dict) else None
            if not isinstance(ex, dict) or not ex.get("user") or not pairs or not all(
                    isinstance(p, dict) and p.get("question") and p.get("answer") for p in pairs):
                raise PromptError(f"{path}: examples[{i}] needs 'user' text and non-empty 'pairs' of "
                                  "{question, answer}")
        return cls(data["code"], data["name"], data["reader"], data["group"], data["system"].strip(),
                   examples, path)

    def dump(self, path: str | Path) -> None:
        data = {"code": self.code, "name": self.name, "reader": self.reader, "group": self.group,
                "system": self.system + "\n", "examples": self.examples}
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110), encoding="utf-8")

    def system_message(self, as_json: bool) -> str:
        return self.system + "\n\n" + (json_instruction(QA_SCHEMA) if as_json else TEXT_FORMAT_NOTE)

    def messages(self, query_text: str, as_json: bool, with_examples: bool = True) -> list[dict]:
        """system, then each example as a user/assistant turn, then the query."""
        msgs = [{"role": "system", "content": self.system_message(as_json)}]
        if with_examples:
            for ex in self.examples:
                msgs.append({"role": "user", "content": ex["user"].strip()})
                msgs.append({"role": "assistant", "content": render_pairs(ex["pairs"], as_json)})
        msgs.append({"role": "user", "content": query_text})
        return msgs


def find_spec(task: str, prompts_dir: str | Path | None = None) -> PromptSpec:
    """A spec by file path, or by task code in --prompts-dir first, then the built-in prompts."""
    p = Path(task)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return PromptSpec.load(p)
    dirs = ([Path(prompts_dir)] if prompts_dir else []) + [BUILTIN_DIR]
    for d in dirs:
        for ext in (".yaml", ".yml"):
            if (d / f"{task}{ext}").exists():
                return PromptSpec.load(d / f"{task}{ext}")
    known = sorted(x.stem for d in dirs for x in d.glob("*.y*ml"))
    raise PromptError(f"no prompt spec for task {task!r}; known tasks: {known}")

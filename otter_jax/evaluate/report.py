"""results.json and a markdown report: a header (checkpoint, devices, wall time), then per task a table with one
row per shot count (mean +- std over seeds) and the breakdowns (MME tasks, POPE splits, categories, judge)."""
from __future__ import annotations

import json
import os


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown(results: dict) -> str:
    lines = ["# Evaluation report", ""]
    if results.get("toy"):
        lines += ["> **Toy run: these numbers test the pipeline, not Otter's quality.** "
                  + "; ".join(r[0].upper() + r[1:] for r in results["toy"]) + ".", ""]
    m = results.get("model")
    lines += [f"- checkpoint: `{results['checkpoint']}`"
              + (f" ({m['parameters'] / 1e6:,.2f}M parameters, {m['text_model']}, {m['layers']} layers)" if m else ""),
             f"- config: `{results.get('config') or '-'}`",
             f"- started: {results['started']}; wall time: {results['wall_time_s']:.1f} s",
             f"- devices: {results['devices']}; mesh: {results['mesh'] or 'none (one device)'}; "
             f"batch: {results['batch_size']}",
             f"- prompts: {results['prompt_style']}; few-shot: {results['fewshot']['method']} "
             f"(query set {results['fewshot']['query_set_size']}, 0-shot text-only demos: "
             f"{results['fewshot']['zero_shot_text_demos']})", ""]
    for name, task in results["tasks"].items():
        lines += [f"## {name} ({task['format']}, {task['mode']})", "",
                  f"{task['examples']} examples from `{task['source']}`; demonstration pool {task['pool']}"
                  + (f"; {task['skipped']} skipped (not images)" if task.get("skipped") else "")
                  + f"; {task['wall_time_s']:.1f} s", ""]
        keys = []
        for m in task["summary"].values():
            keys += [k for k in m if k not in keys]
        if keys:
            lines += ["| shots | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
            for shots, m in task["summary"].items():
                seeds = next(iter(m.values()))["seeds"] if m else []
                cells = []
                for k in keys:
                    if k not in m:
                        cells.append("-")
                    elif len(m[k]["seeds"]) > 1:
                        cells.append(f"{m[k]['mean']:.2f} ± {m[k]['std']:.2f}")
                    else:
                        cells.append(f"{m[k]['mean']:.2f}")
                lines.append(f"| {shots} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
            lines.append("")
        for run in task["runs"]:
            d = run["details"]
            extra = []
            if "tasks" in d:  # MME
                extra += ["| MME task | acc | acc+ | score |", "|---|---|---|---|"]
                extra += [f"| {k} | {v['acc']:.2f} | {v['acc_plus']:.2f} | {v['score']:.2f} |"
                          for k, v in d["tasks"].items()]
            elif task["format"] == "pope":
                extra += ["| POPE split | accuracy | precision | recall | F1 | yes-ratio |", "|---|---|---|---|---|---|"]
                extra += [f"| {k} | {v['accuracy']:.2f} | {v['precision']:.2f} | {v['recall']:.2f} | {v['f1']:.2f} | "
                          f"{v['yes_ratio']:.2f} |" for k, v in d.items()]
            for key in ("per_category", "per_answer_type"):
                if d.get(key):
                    extra += [f"| {key.replace('_', ' ')} | accuracy |", "|---|---|"]
                    extra += [f"| {k} | {v:.2f} |" for k, v in d[key].items()]
            notes = {k: d[k] for k in ("tokenizer", "unparsed", "submission") if k in d}
            if extra or notes:
                lines += [f"{run['shots']}-shot, seed {run['seed']}: "
                          + (", ".join(f"{k} {_fmt(v)}" for k, v in notes.items()) or "breakdown"), ""]
                lines += extra + [""] if extra else []
    return "\n".join(lines).rstrip() + "\n"


def write(results: dict, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, "results.json"), os.path.join(out_dir, "report.md")
    with open(jpath, "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    with open(mpath, "w") as fh:
        fh.write(markdown(results))
    return jpath, mpath

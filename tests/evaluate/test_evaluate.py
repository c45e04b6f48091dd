"""End to end on a tiny random Otter and the tiny bundled sets: every format through `otter-jax eval`, resume after
an interruption, sharded = single-device predictions, likelihood scoring vs a plain forward pass, demonstration
choice (seeded random, RICES), pairwise judging against a local fake endpoint, and error messages."""
import json
import os

import jax
import numpy as np
import pytest

from otter_jax.evaluate import config as C
from otter_jax.evaluate import prompts
from otter_jax.evaluate.engine import Engine
from otter_jax.evaluate.example import DataError, Example
from otter_jax.evaluate.fewshot import DemoSelector
from otter_jax.evaluate.journal import ResumeError
from otter_jax.evaluate.runner import Evaluation

DEMO = "configs/eval/demo.py"


def _cfg(ckpt, sets, out, *extra):
    return C.load(f"{DEMO}:{ckpt}", [f"--config.data_root={sets}", f"--config.output_dir={out}",
                                     "--config.progress=False", "--config.write_tiny_sets=False", *extra])


@pytest.fixture(scope="module")
def demo_run(tiny_checkpoint, tiny_sets, tmp_path_factory):
    """The whole demo suite once, through the CLI entry point."""
    from otter_jax.cli import main

    out = str(tmp_path_factory.mktemp("eval"))
    rc = main(["eval", "--config", f"{DEMO}:{tiny_checkpoint}", f"--config.data_root={tiny_sets}",
               f"--config.output_dir={out}", "--config.progress", "False"])
    assert rc == 0
    with open(os.path.join(out, "results.json")) as fh:
        return out, json.load(fh)


def test_every_format_end_to_end(demo_run):
    out, res = demo_run
    tasks = res["tasks"]
    assert set(tasks) == {"coco", "flickr30k", "vqav2", "mmbench", "scienceqa", "seedbench", "mme", "pope"}
    assert [r["shots"] for r in tasks["coco"]["runs"]] == [0, 4] and tasks["coco"]["pool"] == 8
    assert tasks["seedbench"]["skipped"] == 1 and tasks["seedbench"]["examples"] == 4
    metric = {n: t["summary"]["0"] for n, t in tasks.items()}
    for name, key in (("coco", "cider"), ("vqav2", "accuracy"), ("mmbench", "accuracy"), ("scienceqa", "accuracy"),
                      ("seedbench", "accuracy"), ("mme", "perception"), ("pope", "random/f1")):
        assert key in metric[name], name
    for name, m in metric.items():
        for k, v in m.items():
            hi = 400.0 if name == "mme" else 1000.0 if name in ("coco", "flickr30k") else 100.0
            assert 0.0 <= v["mean"] <= hi, (name, k)
    assert metric["mme"]["cognition"]["mean"] == metric["mme"]["commonsense_reasoning"]["mean"]
    # every example predicted once; demonstrations recorded (0-shot: 2 text-only ones, 4-shot: 4)
    for name, t in tasks.items():
        for run in t["runs"]:
            with open(run["predictions"]) as fh:
                recs = [json.loads(x) for x in fh]
            assert len(recs) == len({r["id"] for r in recs}) == t["examples"], name
            if name == "coco":
                assert {len(r["demos"]) for r in recs} == {2 if run["shots"] == 0 else 4}
    seed_recs = [json.loads(x) for x in open(tasks["seedbench"]["runs"][0]["predictions"])]
    assert all(len(r["logprobs"]) == 4 and all(v < 0 for v in r["logprobs"]) for r in seed_recs)
    report = open(os.path.join(out, "report.md")).read()
    assert "| shots | seeds | cider |" in report and "| MME task | acc | acc+ | score |" in report
    assert res["tasks"]["mmbench"]["runs"][0]["details"]["submission"].endswith(".tsv")


def test_report_says_when_the_run_is_a_toy(demo_run, tmp_path):
    from otter_jax.evaluate.report import markdown
    from otter_jax.evaluate.runner import toy_reasons

    out, res = demo_run
    report = open(os.path.join(out, "report.md")).read()
    toy = report.splitlines()[2]
    assert toy.startswith("> **Toy run: these numbers test the pipeline, not Otter's quality.**")
    assert f"{res['model']['parameters'] / 1e6:.2f}M parameters" in toy and "bundled tiny sets" in toy
    # a released-size model on real data: no such line
    big = {"parameters": 7_400_000_000, "text_model": "mpt", "layers": 32, "vocab_size": 50432}
    assert toy_reasons(big, str(tmp_path)) == []
    assert "Toy run" not in markdown({**res, "model": big, "toy": []})


def test_resume_recomputes_only_missing_examples(demo_run, loaded, tiny_checkpoint, tiny_sets, monkeypatch):
    out, res = demo_run
    path = [r for r in res["tasks"]["coco"]["runs"] if r["shots"] == 4][0]["predictions"]
    lines = open(path).read().splitlines(keepends=True)
    kept, lost = lines[:-2], [json.loads(x) for x in lines[-2:]]
    with open(path, "w") as fh:  # an interruption: two lines missing, one written halfway
        fh.write("".join(kept) + lines[-2][:15])
    calls = []
    orig = Engine.generate

    def counting(self, prompts_, read_image, **gen):
        calls.append(len(prompts_))
        return orig(self, prompts_, read_image, **gen)

    monkeypatch.setattr(Engine, "generate", counting)
    c = _cfg(tiny_checkpoint, tiny_sets, out, "--config.tasks.coco.shots=4")
    c.tasks = {"coco": c.tasks.coco}
    res2 = Evaluation(c, *loaded).run()
    assert calls == [2]
    after = {json.loads(x)["id"]: json.loads(x) for x in open(path)}
    assert len(after) == len(lines)
    for rec in lost:
        assert after[rec["id"]] == rec  # same demonstrations, same greedy / beam answer
    assert res2["tasks"]["coco"]["summary"]["4"]["cider"]["mean"] == pytest.approx(
        res["tasks"]["coco"]["summary"]["4"]["cider"]["mean"])
    # resuming under different decoding settings is refused
    c2 = _cfg(tiny_checkpoint, tiny_sets, out, "--config.tasks.coco.shots=4", "--config.tasks.coco.max_new_tokens=3")
    c2.tasks = {"coco": c2.tasks.coco}
    with pytest.raises(ResumeError, match="max_new_tokens"):
        Evaluation(c2, *loaded).run()


def test_sharded_evaluation_matches_single_device(demo_run, loaded, tiny_checkpoint, tiny_sets, tmp_path):
    from otter_jax.checkpoint import load_model
    from otter_jax.sharding import make_mesh

    _, res = demo_run
    assert jax.device_count() == 8
    mesh = make_mesh(data=4, fsdp=2)
    model, _ = load_model(tiny_checkpoint, mesh=mesh)
    model.with_config(tokens=loaded[0].cfg.tokens)
    c = _cfg(tiny_checkpoint, tiny_sets, str(tmp_path), "--config.batch_size=6")
    c.tasks = {"pope": c.tasks.pope}
    ev = Evaluation(c, model, loaded[1], mesh=mesh)
    assert ev.engine.batch_size == 8  # rounded up to a multiple of the 8 batch shards
    sharded = ev.run()
    want = {json.loads(x)["id"]: json.loads(x)["prediction"] for x in open(res["tasks"]["pope"]["runs"][0]["predictions"])}
    got = {json.loads(x)["id"]: json.loads(x)["prediction"] for x in open(sharded["tasks"]["pope"]["runs"][0]["predictions"])}
    assert got == want


def test_option_logprobs_equal_plain_forward(loaded, tiny_sets):
    model, tok = loaded
    engine = Engine(model, tok, batch_size=4, length_bucket=16)
    image = os.path.join(tiny_sets, "images", "DEMO_IMG_cat.jpg")
    prompt = prompts.build("multichoice", "otter", Example("q", (image,), "What animal?", options=("cat", "a dog")),
                           [], demo_images=False)
    options = ["cat", "a dog", "a big red bus"]
    got = engine.option_logprobs([prompt], [options], lambda p: open(p, "rb").read())[0]
    vision = engine.vision_batch([prompt[1]], lambda p: open(p, "rb").read())[:1]
    for (score, n), opt in zip(got, options):
        base = engine.encode(prompt[0])
        oid = tok(opt, add_special_tokens=False)["input_ids"]
        ids = np.asarray([base + oid], np.int32)
        logits = np.asarray(model(vision, ids).logits[0], np.float64)
        logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        want = sum(logp[len(base) + i - 1, t] for i, t in enumerate(oid))
        assert n == len(oid)
        assert score == pytest.approx(want, abs=1e-4)


def test_demonstrations_random_and_rices(loaded, tiny_sets):
    from otter_jax.evaluate.formats.captioning import read_karpathy

    data = read_karpathy(os.path.join(tiny_sets, "coco", "dataset_coco.json"), os.path.join(tiny_sets, "coco"))
    sel = DemoSelector(data.pool, "random", seed=42, query_set_size=6)
    assert len(sel.query_set) == 6
    a = [d.id for d in sel.select(data.examples[1], 4)]
    again = DemoSelector(data.pool, "random", seed=42, query_set_size=6)
    again.select(data.examples[0], 4)  # another example first: no effect on example 1's demonstrations
    assert [d.id for d in again.select(data.examples[1], 4)] == a
    other = [DemoSelector(data.pool, "random", seed=s, query_set_size=6) for s in range(43, 47)]
    assert any({d.id for d in o.query_set} != {d.id for d in sel.query_set} for o in other)  # the seed matters
    assert all(set(d.id for d in sel.select(ex, 4)) <= {d.id for d in sel.query_set} for ex in data.examples)
    # RICES with our vision features: a pool image queried against the pool comes back last (most similar).
    model, tok = loaded
    engine = Engine(model, tok, batch_size=8)
    read = data.read_image
    rices = DemoSelector(data.pool, "rices", seed=0, query_set_size=-1,
                         features=lambda exs: engine.features([e.images[0] for e in exs], read))
    query = data.pool[3]
    feat = engine.features([query.images[0]], read)[0]
    assert np.linalg.norm(feat) == pytest.approx(1.0, abs=1e-5)
    demos = rices.select(query, 3, feat)
    assert demos[-1].id == query.id
    sims = [float(engine.features([d.images[0]], read)[0] @ feat) for d in demos]
    assert sims == sorted(sims)
    # 0-shot convention: demonstrations without their <image>
    text, keys = prompts.build("captioning", "otter", data.examples[0], demos[:2], demo_images=False)
    assert text.count("<image>") == 1 and keys == data.examples[0].images
    text, keys = prompts.build("vqa", "openflamingo", Example("x", ("q.jpg",), "What?", ("a",)),
                               [Example("d", ("d.jpg",), "Who?", ("me",))], demo_images=True)
    assert text == "<image>Question:Who? Short answer:me<|endofchunk|><image>Question:What? Short answer:"
    assert keys == ("d.jpg", "q.jpg")


def test_pairwise_judging_with_fake_endpoint(loaded, tiny_checkpoint, tiny_sets, tmp_path):
    from syphus.fake_server import FakeOpenAI

    def longer_wins(body):  # a judge that prefers the longer answer, whatever the order
        text = body["messages"][-1]["content"][-1]["text"]
        a = text.split("[Answer A]\n")[1].split("\n[End of Answer A]")[0]
        b = text.split("[Answer B]\n")[1].split("\n[End of Answer B]")[0]
        return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[tie]]"

    server = FakeOpenAI(answer=longer_wins).serve_in_thread()
    try:
        c = _cfg(tiny_checkpoint, tiny_sets, str(tmp_path), "--config.tasks.pairwise.enabled=True",
                 f"--config.judge.base_url={server.base_url}", "--config.judge.model=judge")
        c.tasks = {"pairwise": c.tasks.pairwise}
        res = Evaluation(c, *loaded).run()
        details = res["tasks"]["pairwise"]["runs"][0]["details"]
        ours = {json.loads(x)["id"]: json.loads(x)["prediction"]
                for x in open(res["tasks"]["pairwise"]["runs"][0]["predictions"])}
        baseline = {json.loads(x)["id"]: json.loads(x)["baseline"]
                    for x in open(os.path.join(tiny_sets, "pairwise", "questions.jsonl"))}
        for rid, d in details["per_example"].items():
            want = ("win" if len(ours[rid]) > len(baseline[rid]) else
                    "lose" if len(ours[rid]) < len(baseline[rid]) else "tie")
            assert d["outcome"] == want, rid
        assert details["win"] + details["lose"] + details["tie"] == pytest.approx(100.0)
        sent = sum(server.seen.values())
        assert sent == 6  # 3 examples x 2 orders
        Evaluation(c, *loaded).run()  # resumed: nothing is sent again
        assert sum(server.seen.values()) == sent
    finally:
        server.stop()


def test_errors_name_file_and_record(tmp_path, tiny_sets):
    from otter_jax.evaluate.formats.vqa import read_vqa

    q = tmp_path / "q.json"
    a = tmp_path / "a.json"
    q.write_text(json.dumps({"questions": [{"question_id": 7, "image_id": 1, "question": "?"}]}))
    a.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match=r"a\.json: no annotation for question 7"):
        read_vqa(str(q), str(a), str(tmp_path))
    with pytest.raises(C.EvalConfigError, match="config.tasks.coco.nope"):
        C.load(f"{DEMO}:x", ["--config.tasks.coco.nope=1"])
    with pytest.raises(C.EvalConfigError, match="config.checkpoint"):
        C.load(DEMO, [])

"""Metrics on hand-computable cases: official VQA accuracy (quirks included), CIDEr equal to pycocoevalcap's own
pipeline, MME acc / acc+ and totals, POPE scores, multiple-choice parsing, pairwise verdicts."""
import pytest

from otter_jax.evaluate import choice, judge, ptb, vqa_metric, yesno
from otter_jax.evaluate.cider import cider


# ---------------------------------------------------------------------------------------------------------- VQA
@pytest.mark.parametrize("pred, answers, want", [
    ("yes", ["yes"] * 10, 1.0),
    # 2 humans said "2": each of those 2 leave-one-out subsets has 1 match (1/3), the 8 others have 2 (2/3).
    ("2", ["2"] * 2 + ["3"] * 8, (2 * (1 / 3) + 8 * (2 / 3)) / 10),
    ("Two.", ["2"] * 3 + ["3"] * 7, (3 * (2 / 3) + 7 * 1.0) / 10),  # number word + final period normalised
    ("the dog", ["dog"] * 10, 1.0),  # article dropped
    ("dont know", ["don't know"] * 10, 1.0),  # contraction restored
    ("1,000", ["1000"] * 4 + ["many"] * 6, 1.0),  # digit comma: punctuation removed without a space
    ("blue", ["red"] * 10, 0.0),
    # Official quirk: agreeing human answers are not normalised, the prediction always is ("t-shirt" -> "t shirt").
    ("t-shirt", ["t-shirt"] * 10, 0.0),
    ("t-shirt", ["t-shirt"] * 9 + ["shirt"], 1.0),
])
def test_vqa_accuracy_official_cases(pred, answers, want):
    assert vqa_metric.vqa_accuracy(pred, answers) == pytest.approx(want)


def test_vqa_postprocessing_and_errors():
    assert vqa_metric.postprocess_vqa_generation("red, blue Question: what") == "red"
    assert vqa_metric.postprocess_vqa_generation("two Short answer: 3") == "two"
    with pytest.raises(ValueError):
        vqa_metric.vqa_accuracy("x", [])


# ---------------------------------------------------------------------------------------------------------- CIDEr
REFS = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides a big wave in the ocean.",
          "Man surfing on a wave."],
    "2": ["Two zebras standing in the grass.", "A pair of zebras grazing in a field.", "Zebras eating grass together."],
    "3": ["A cat sleeping on a laptop keyboard.", "A cat laying on top of a laptop computer.",
          "The cat's asleep on the computer."],
    "4": ["A plate of food with broccoli, carrots and rice.", "Rice and vegetables on a white plate.",
          "A healthy meal (rice & veggies) on a plate."],
    "5": ["A red double-decker bus on a city street.", "A bus drives down the road in London, U.K.",
          "A big red bus isn't moving."],
}
PREDS = {"1": "a man riding a wave on a surfboard", "2": "two zebras eating grass in a field.", "3": "a dog on a couch",
         "4": "A plate of rice and broccoli.", "5": "a red bus on the street"}
# pycocoevalcap 1.2's own pipeline (PTBTokenizer via Java + Cider), x100, computed once with Java 17.
PYCOCOEVALCAP_CIDER = 187.23773407126518


def test_cider_python_tokenizer_equals_pycocoevalcap_number():
    value, backend = cider(PREDS, REFS, "python")
    assert backend == "python"
    assert value == pytest.approx(PYCOCOEVALCAP_CIDER, abs=1e-9)
    worse, _ = cider({**PREDS, "3": "a cat on a laptop"}, REFS, "python")
    assert worse != pytest.approx(value)


@pytest.mark.skipif(not ptb.java_available(), reason="no java: pycocoevalcap's PTBTokenizer cannot run")
def test_cider_matches_pycocoevalcap_live():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    want = Cider().compute_score(gts, res)[0] * 100
    assert want == pytest.approx(PYCOCOEVALCAP_CIDER, abs=1e-9)
    assert cider(PREDS, REFS, "java")[0] == pytest.approx(want, abs=1e-9)


TRICKY = [
    "A man (in a red shirt) is riding a bike.", "The cat's toy isn't here; it's \"gone\" -- really!",
    "It costs $5.50 or 1,000 dollars at 3:30 p.m. in the U.S.", "She said ``hello'' and 'bye' ... ok?",
    "A {curly} [square] thing & stuff @ home #tag 50% off", "can't won't don't I'm you're we've they'll he'd",
    "DON'T SHOUT... Mr. Smith vs. Dr. Who etc.", "e-mail co-op 2-3 10:00 1/2 3.14 -5 +7 a/b",
    "cafés naïve résumé \u2013 \u2014 \u201csmart quotes\u201d \u2018single\u2019 \u2026",
    "gonna wanna gotta cannot d'ye 'tis 'twas", "Wait...what?! no way!!! yes?? ok.. hm",
    "A 10-year-old boy plays with a frisbee at 5:30pm.", "Street signs at 5th Ave. and 42nd St.",
    "An adult and a child.  Both smiling :)", "approx. 3 km away", "The dogs' owner throws a ball.",
    "a close up of a pizza w/ pepperoni", "http://example.com foo@bar.com",
]


def test_python_tokenizer_known_outputs():
    out = ptb.tokenize_python({i: [{"caption": s}] for i, s in enumerate(TRICKY[:3])})
    assert out[0] == ["a man -lrb- in a red shirt -rrb- is riding a bike"]  # lowercase brackets survive, as upstream
    assert out[1] == ["the cat 's toy is n't here it 's gone really"]
    assert out[2] == ["it costs $ 5.50 or 1,000 dollars at 3:30 p.m. in the u.s."]


@pytest.mark.skipif(not ptb.java_available(), reason="no java to compare with")
def test_python_tokenizer_matches_stanford_jar():
    caps = {i: [{"caption": s}] for i, s in enumerate(TRICKY + list(c for v in REFS.values() for c in v))}
    assert ptb.tokenize_python(caps) == ptb.tokenize_java(caps)


# ---------------------------------------------------------------------------------------------------------- yes/no
def test_mme_acc_plus_and_totals():
    rows = [  # existence: image a both right, image b one right -> acc 3/4, acc+ 1/2 -> 75 + 50 = 125
        ("existence", "a", "Yes", "Yes, there is."), ("existence", "a", "No", "no"),
        ("existence", "b", "Yes", "Yes"), ("existence", "b", "No", "Yes it is"),
        # color: "other" answers are wrong -> acc 1/2, acc+ 0 -> 50
        ("color", "c", "Yes", "maybe"), ("color", "c", "No", "No."),
        # code_reasoning (cognition): both right -> 200
        ("code_reasoning", "d", "Yes", "YES"), ("code_reasoning", "d", "No", "Nope, no"),
    ]
    s = yesno.mme_scores([{"task": t, "image": i, "label": l, "prediction": p} for t, i, l, p in rows])
    assert s["tasks"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "questions": 4, "images": 2}
    assert s["tasks"]["color"]["score"] == 50.0
    assert s["perception"] == 175.0 and s["cognition"] == 200.0
    assert yesno.mme_label("not sure") == "no" and yesno.mme_label("I think yes") == "other"


def test_pope_scores_small_table():
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    preds = ["Yes, there is a cat.", "There is no dog. But yes.", "yes", "Yes.", "No, there is not.", "not at all"]
    # pred: yes, no, yes, yes, no, no -> tp 2, fn 1, fp 1, tn 2
    s = yesno.pope_scores(labels, preds)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (2, 1, 1, 2)
    assert s["accuracy"] == pytest.approx(400 / 6)
    assert s["precision"] == pytest.approx(200 / 3) and s["recall"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(200 / 3) and s["yes_ratio"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="row 1"):
        yesno.pope_scores(["yes", "maybe"], ["yes", "no"])


# ---------------------------------------------------------------------------------------------------------- choice
@pytest.mark.parametrize("answer, want", [
    ("The answer is B.", 1), ("(C) coffee", 2), ("A. dog", 0), ("B", 1), ("It is a cat.", 1), ("coffee", 2),
    ("E", None), ("a dog or a cat", None), ("", None),
])
def test_parse_choice(answer, want):
    assert choice.parse_choice(answer, ["dog", "cat", "coffee"]) == want


def test_rank_choice_sum_and_mean():
    assert choice.rank_choice([-3.0, -4.0], [1, 4], "sum") == 0
    assert choice.rank_choice([-3.0, -4.0], [1, 4], "mean") == 1


def test_pairwise_verdicts_both_orders():
    assert judge.parse_verdict("I pick [[B]] because") == "B"
    assert judge.parse_verdict("[[Tie]]") == "tie" and judge.parse_verdict("no idea") is None
    assert judge.combine("A", "B") == "win" and judge.combine("B", "A") == "lose"
    assert judge.combine("A", "A") == "tie"  # position bias: each order prefers the first answer
    assert judge.combine("A", "tie") == "win" and judge.combine("tie", "A") == "lose"
    assert judge.combine(None, "B") == "win"

"""Pairwise LLM judging (MM-Instruct protocol): our answers vs a baseline's, judged in both orders by a model behind
an OpenAI-compatible endpoint (key read from $OPENAI_API_KEY, or the variable named by judge.api_key_env).

    otter-jax eval --config configs/eval/pairwise.py:CKPT --config.tasks.pairwise.questions=questions.jsonl \
        --config.judge.base_url=https://host/v1 --config.judge.model=JUDGE_MODEL
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.checkpoint = arg or ""
    c.output_dir = "runs/eval_pairwise"
    c.shots = "0"
    c.fewshot = dict(zero_shot_text_demos=False)
    c.judge = dict(base_url="", model="")
    c.tasks = {"pairwise": dict(format="pairwise", questions="data/eval/pairwise/questions.jsonl")}
    return c

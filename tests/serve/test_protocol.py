"""Chat messages -> Otter prompt ids, in process (no model): the mapping rules of serve/protocol.py."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from golden_helpers import golden_dir
from otter_jax.generate.requests import Example, Request, context_prompt_ids, load_checkpoint_tokenizer, prompt_ids
from otter_jax.serve.protocol import ApiError, Limits, Sources, parse_chat


def png(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def ids_of(req, tok):
    return context_prompt_ids([(q, a, len(ms)) for q, a, ms in req.context], req.question, len(req.media), tok)


def parse(messages, **body):
    return parse_chat({"messages": messages, **body}, Sources(), Limits(), "m")


def test_turns_become_in_context_examples_as_generate_builds_them():
    tok = load_checkpoint_tokenizer(str(golden_dir("otter_llama_tiny")))
    req = parse([{"role": "user", "content": [{"type": "text", "text": "what is in the picture?"}, part(png(0))]},
                 {"role": "assistant", "content": "a brown dog on the grass."},
                 {"role": "user", "content": [part(png(1)), {"type": "text", "text": "what color is the car?"}]}])
    expected = Request(prompt="what color is the car?", images=["b.png"],
                       in_context=[Example("a.png", "what is in the picture?", "a brown dog on the grass.")])
    assert ids_of(req, tok) == prompt_ids(expected, tok)
    assert [m.key for m in req.all_media] == [parse([{"role": "user", "content": [part(png(s))]}]).media[0].key
                                              for s in (0, 1)]  # example media first, keys from the bytes


def test_system_text_consecutive_users_and_text_only_turns():
    req = parse([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "hello"}, {"role": "user", "content": [part(png(0))]},
                 {"role": "user", "content": "what is it?"}])
    assert req.context == [("hi", "hello", [])]
    assert req.question == "be brief\nwhat is it?" and len(req.media) == 1
    assert req.sampling.temperature == 0.0 and req.sampling.n == 1 and not req.stream  # greedy by default


@pytest.mark.parametrize("messages,body,code", [
    ([{"role": "assistant", "content": "x"}, {"role": "user", "content": "q"}], {}, "invalid_role"),
    ([{"role": "user", "content": "q"}], {"top_p": 0}, "invalid_value"),
    ([{"role": "user", "content": "q"}], {"seed": -1}, "invalid_value"),
    ([{"role": "user", "content": "q"}], {"max_tokens": True}, "invalid_value"),
    ([{"role": "user", "content": "q"}], {"response_format": {"type": "json_object"}}, "unsupported_value"),
    ([{"role": "user", "content": [part("file:///etc/passwd")]}], {}, "local_files_disabled"),
    ([{"role": "user", "content": [part("ftp://x/y.png")]}], {}, "invalid_image_url"),
    ([{"role": "user", "content": [part("data:image/png,abc")]}], {}, "invalid_image_url"),
    ([{"role": "user", "content": 7}], {}, "invalid_type"),
])
def test_bad_bodies_name_the_problem(messages, body, code):
    with pytest.raises(ApiError) as e:
        parse(messages, **body)
    assert e.value.status == 400 and e.value.code == code and e.value.body()["error"]["param"]

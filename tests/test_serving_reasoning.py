"""Reasoning split out of <think> (as vLLM's reasoning parser does), whole and streamed, and put back by
OpenAIBackend from a server that returns it separately."""

import pytest

from reasoner.sampling import Sampling
from reasoner.serving.backends import OpenAIBackend
from reasoner.serving.reasoning import ReasoningStream, split_reasoning

CASES = {
    "<think>7+5=12</think><answer>12</answer>": ("7+5=12", "<answer>12</answer>"),
    "\n<think>a</think>b": ("a", "b"),
    "<think>still thinking": ("still thinking", ""),          # ran out of tokens inside the tag
    "no tags at all": (None, "no tags at all"),
    "text then <think>x</think>": (None, "text then <think>x</think>"),
    "<think></think>": ("", ""),
    "<thi": (None, "<thi"),
}


@pytest.mark.parametrize("text", CASES)
def test_split_reasoning(text):
    assert split_reasoning(text) == CASES[text]


@pytest.mark.parametrize("text", CASES)
def test_streamed_pieces_add_up_to_the_whole_split(text):
    for size in (1, 2, 3, 5, 8):  # every way of cutting the text into pieces of this size, tags included
        stream, reasoning, content = ReasoningStream(), "", ""
        for piece in [text[i:i + size] for i in range(0, len(text), size)] + [None]:
            r, c = stream.finish() if piece is None else stream.feed(piece)
            reasoning, content = reasoning + r, content + c
        expected_reasoning, expected_content = CASES[text]
        assert (reasoning, content) == (expected_reasoning or "", expected_content), size


def reply_with_separate_reasoning(server, method, body):
    server.bodies.append(body)
    return 200, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "<answer>12</answer>", "reasoning_content": "7+5=12"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9}}


def test_openai_backend_puts_separate_reasoning_back_in_its_tags(json_server):
    server = json_server(reply_with_separate_reasoning, bodies=[])
    backend = OpenAIBackend(server.base_url, "m")
    [reply] = backend.generate([{"role": "user", "content": "7+5"}], 1, Sampling())
    backend.generate([{"role": "user", "content": "7+5"}], 1, Sampling(seed=3, stop=("</answer>",), top_k=5))
    assert reply.text == "<think>7+5=12</think><answer>12</answer>" and reply.completion_tokens == 9
    plain, seeded = server.bodies
    assert not {"seed", "stop", "top_k"} & set(plain)  # unset fields are left out, not sent as null
    assert (seeded["seed"], seeded["stop"], seeded["top_k"]) == (3, ["</answer>"], 5)

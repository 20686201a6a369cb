"""reasoner.generation.generate, the one way to run a local model: the rollout engine for a DeepseekV3ForCausalLM,
transformers' generate for anything else (here a peft LoRA wrapper), with the same stop, finish and count rules."""
import copy
import time

import pytest
from peft import LoraConfig, get_peft_model

from reasoner.generation import engine_for, generate
from reasoner.mtp import attach_mtp
from reasoner.sampling import Sampling


@pytest.fixture(scope="module")
def wrapped(tiny):
    """The tiny model inside a LoRA wrapper whose adapters start at zero: the same function, not the engine's type."""
    model, tokenizer = tiny
    lora = LoraConfig(r=4, target_modules=["q_a_proj", "kv_a_proj_with_mqa"])
    peft_model = get_peft_model(copy.deepcopy(model), lora)
    assert engine_for(model, tokenizer) is not None and engine_for(peft_model, tokenizer) is None
    return peft_model.eval()


def prompts(tokenizer):
    texts = ("<|user|>2+2<|assistant|>", "<|user|>hello<|assistant|>")
    return [tokenizer(text, add_special_tokens=False).input_ids for text in texts]


def test_both_paths_agree_on_text_stop_strings_finish_reasons_and_counts(tiny, wrapped, one_thread):
    model, tokenizer = tiny
    greedy = Sampling(temperature=0, max_tokens=20)
    engine = generate(model, tokenizer, prompts(tokenizer), greedy)
    hf = generate(wrapped, tokenizer, prompts(tokenizer), greedy)
    assert [o.text for o in engine] == [o.text for o in hf] and {o.finish_reason for o in engine} <= {"stop", "length"}
    stop = engine[0].text[5:7]
    assert engine[0].text.find(stop) >= 3
    stopped = Sampling(temperature=0, max_tokens=20, stop=(stop,))
    for run in (generate(m, tokenizer, prompts(tokenizer), stopped) for m in (model, wrapped)):
        assert run[0].text == engine[0].text[:engine[0].text.find(stop)] and run[0].finish_reason == "stop"
        assert len(run[0].token_ids) < 20 and tokenizer.decode(run[0].token_ids).endswith(stop)  # the stop's tokens
        assert [o.text for o in run[1:]] == [o.text for o in engine[1:]]


@pytest.mark.parametrize("path", ["engine", "generate"])
def test_a_timeout_ends_decoding_early(tiny, wrapped, path, one_thread):
    model, tokenizer = tiny
    model = model if path == "engine" else wrapped
    started = time.monotonic()
    outputs = generate(model, tokenizer, prompts(tokenizer), Sampling(temperature=1.0, max_tokens=900), num_samples=4,
                       timeout=0.2)
    assert time.monotonic() - started < 3 and len(outputs) == 8
    assert any(o.finish_reason == "length" and len(o.token_ids) < 900 for o in outputs)


@pytest.mark.parametrize("path", ["engine", "speculative", "generate"])
def test_each_step_s_tokens_are_heard_as_they_are_sampled(tiny, wrapped, path, one_thread, tmp_path):
    model, tokenizer = tiny
    if path == "generate":
        model = wrapped
    elif path == "speculative":  # MTP drafts: a step may give a row two tokens
        model = copy.deepcopy(model)
        attach_mtp(model, 1)
    heard: dict[int, list[int]] = {}
    steps = []

    def listen(rows, tokens):
        steps.append(len(rows))
        for row, token in zip(rows, tokens):
            heard.setdefault(row, []).append(token)

    outputs = generate(model, tokenizer, prompts(tokenizer), Sampling(temperature=0.8, max_tokens=24, seed=1),
                       num_samples=2, on_tokens=listen)
    assert len(steps) >= 12 and max(steps) <= 4  # step by step, never more rows than the batch
    assert [heard[i] for i in range(len(outputs))] == [o.token_ids for o in outputs]

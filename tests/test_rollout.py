"""The rollout engine against transformers' own generate on real (random-init) tiny/small DeepseekV3 models."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import DeepseekV3ForCausalLM, TopKLogitsWarper, TopPLogitsWarper

from reasoner.model import load_model
from reasoner.rollout import RolloutEngine, Sampling
from reasoner.rollout.ffn import FFN, route
from reasoner.rollout.hooks import generate_grouped
from reasoner.rollout.sampling import process_logits, sample

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny")
    return model.eval(), tok


def chat_ids(tok, texts):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]


PROMPTS = ["What is 2+3?", "Compute 12*7, then add 5 to it.", "9-4"]  # three different lengths


def hf_generate(model, tok, prompts, max_new_tokens, **kw):
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **kw)
    width = enc["input_ids"].shape[1]
    return out.sequences[:, width:], torch.stack(out.logits, dim=1).float()


def assert_matches_generate(model, tok, prompts, max_new_tokens, engine=None, eos=None, atol=1e-4):
    engine = engine or RolloutEngine(model, tok)
    ours = engine.generate(prompts, Sampling(temperature=0.0, max_tokens=max_new_tokens), return_logits=True)
    kw = {} if eos is None else {"eos_token_id": eos}
    ref_ids, ref_logits = hf_generate(model, tok, prompts, max_new_tokens, **kw)
    for i, c in enumerate(ours):
        n = len(c.token_ids)
        torch.testing.assert_close(c.logits, ref_logits[i, :n], atol=atol, rtol=1e-4)
        assert c.token_ids == ref_ids[i, :n].tolist()
        if c.finish_reason == "length":
            assert n == max_new_tokens
        else:  # generate pads after EOS
            assert c.finish_reason == "eos" and c.token_ids[-1] in engine.eos_token_ids
            assert (ref_ids[i, n:] == tok.pad_token_id).all()
    return ours


def test_greedy_tokens_and_step_logits_match_generate_tiny(tiny):
    model, tok = tiny
    ours = assert_matches_generate(model, tok, chat_ids(tok, PROMPTS), 24)
    assert [c.prompt_index for c in ours] == [0, 1, 2]
    assert all(len(c.logprobs) == len(c.token_ids) for c in ours)


def test_greedy_matches_generate_small_config():
    # q_lora_rank set, grouped routing (4 groups, top-2 groups), routed_scaling_factor 2.5
    model, tok = load_model("small")
    model.eval()
    for layer in model.model.layers[1:]:  # non-zero correction bias: it steers expert choice, not weights
        layer.mlp.gate.e_score_correction_bias.uniform_(-0.05, 0.05)
    assert_matches_generate(model, tok, chat_ids(tok, PROMPTS[:2]), 6, atol=2e-4)


@pytest.mark.parametrize("interleave,rope", [
    (False, {"rope_type": "default", "rope_theta": 10000.0}),
    (True, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8}),
])
def test_rope_layout_and_yarn_scaling_match(tiny, interleave, rope):
    model, tok = tiny
    config = copy.deepcopy(model.config)
    config.rope_interleave = interleave
    config.rope_parameters = rope
    torch.manual_seed(1)
    variant = DeepseekV3ForCausalLM(config).eval()
    variant.generation_config = copy.deepcopy(model.generation_config)
    if rope["rope_type"] == "yarn":
        head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
        assert variant.model.layers[0].self_attn.scaling != pytest.approx(head_dim ** -0.5)  # YaRN mscale
        assert variant.model.rotary_emb.attention_scaling != 1.0
    assert_matches_generate(variant, tok, chat_ids(tok, PROMPTS), 12)


def test_per_sequence_eos_with_batch_compaction(tiny):
    model, tok = tiny
    prompts = chat_ids(tok, [f"{a}+{b}=?" * (1 + a % 3) for a, b in zip(range(10), range(7, 17))])
    free = RolloutEngine(model, tok).generate(prompts, Sampling(temperature=0.0, max_tokens=16))
    # Pick as EOS a token some rows emit early and others late or never, so rows finish at different steps
    # and the engine compacts the batch (<= half the rows left) while the rest keep decoding.
    counts = {}
    for c in free:
        for t in set(c.token_ids[:4]):
            counts[t] = counts.get(t, 0) + 1
    eos = max((t for t in counts if 0 < counts[t] < len(prompts)), key=lambda t: counts[t])
    engine = RolloutEngine(model, tok, eos_token_ids=[eos])
    ours = assert_matches_generate(model, tok, prompts, 16, engine=engine, eos=eos)
    reasons = {c.finish_reason for c in ours}
    assert reasons == {"eos", "length"}
    assert engine.stats["compactions"] >= 1
    no_compact = RolloutEngine(model, tok, eos_token_ids=[eos], compact=False).generate(
        prompts, Sampling(temperature=0, max_tokens=16))
    assert [c.token_ids for c in no_compact] == [c.token_ids for c in ours]


def test_stop_strings_truncate_text_and_tokens(tiny):
    model, tok = tiny
    prompts = chat_ids(tok, PROMPTS[:2])
    engine = RolloutEngine(model, tok)
    free = engine.generate(prompts, Sampling(temperature=0.0, max_tokens=20), ignore_eos=True)
    stop = free[0].text[6:9]
    assert len(stop) == 3
    stopped = engine.generate(prompts, Sampling(temperature=0.0, max_tokens=20, stop=[stop]), ignore_eos=True)
    first = free[0].text.find(stop) + len(stop)
    assert stopped[0].finish_reason == "stop"
    assert stopped[0].text == free[0].text[:first]
    assert stopped[0].token_ids == free[0].token_ids[: len(stopped[0].token_ids)]
    assert stop in tok.decode(stopped[0].token_ids) and stop not in tok.decode(stopped[0].token_ids[:-1])
    if stop not in free[1].text:
        assert stopped[1].finish_reason == "length" and stopped[1].token_ids == free[1].token_ids


def test_samples_share_one_prefill_and_are_seeded(tiny, monkeypatch):
    model, tok = tiny
    prompts = chat_ids(tok, PROMPTS)
    engine = RolloutEngine(model, tok)
    calls = []
    original = engine._trunk  # the main model's forward: prefill and every decode step go through it

    def counting(ids, *args):
        calls.append(tuple(ids.shape))
        return original(ids, *args)

    monkeypatch.setattr(engine, "_trunk", counting)
    out = engine.generate(prompts, Sampling(temperature=1.0, max_tokens=10, seed=123), num_samples=4, ignore_eos=True)
    assert len(out) == 12 and [(c.prompt_index, c.sample_index) for c in out[:5]] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    width = max(map(len, prompts))
    assert calls[0] == (3, width)  # one prefill row per prompt, not per sample
    assert all(shape == (12, 1) for shape in calls[1:]) and len(calls) == 10
    assert len({tuple(c.token_ids) for c in out[:4]}) > 1  # the G samples differ
    again = engine.generate(prompts, Sampling(temperature=1.0, max_tokens=10, seed=123), num_samples=4, ignore_eos=True)
    assert [c.token_ids for c in again] == [c.token_ids for c in out]
    greedy = engine.generate(prompts, Sampling(temperature=0.0, max_tokens=10), num_samples=3)
    single = engine.generate(prompts, Sampling(temperature=0.0, max_tokens=10))
    for i in range(3):
        assert all(greedy[3 * i + k].token_ids == single[i].token_ids for k in range(3))


def test_small_max_batch_chunks_prompts(tiny):
    model, tok = tiny
    prompts = chat_ids(tok, PROMPTS)
    # max_batch_size 2: one prompt per decode batch; prefill_budget 1: one prompt per prefill group
    greedy = Sampling(temperature=0.0, max_tokens=8)
    chunked = RolloutEngine(model, tok, max_batch_size=2).generate(prompts, greedy, num_samples=2)
    one_by_one = RolloutEngine(model, tok, prefill_budget=1).generate(prompts, greedy, num_samples=2)
    assert [c.token_ids for c in one_by_one] == [c.token_ids for c in chunked]
    whole = RolloutEngine(model, tok).generate(prompts, Sampling(temperature=0.0, max_tokens=8), num_samples=2)
    assert [c.token_ids for c in chunked] == [c.token_ids for c in whole]
    assert [c.prompt_index for c in chunked] == [0, 0, 1, 1, 2, 2]


def test_refresh_follows_weight_updates_without_version_bump(tiny):
    model, tok = tiny
    model = copy.deepcopy(model)
    prompts = chat_ids(tok, PROMPTS[:2])
    engine = RolloutEngine(model, tok)
    engine.generate(prompts, Sampling(temperature=0.0, max_tokens=4))
    old = engine.layers[0].w_in.clone()
    with torch.no_grad():  # .data writes (and fused optimizers) do not bump version counters
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.kv_b_proj.weight.data.mul_(1.5)
            attn.o_proj.weight.data.add_(0.01)
    assert_matches_generate(model, tok, prompts, 10, engine=engine)
    assert not torch.equal(old, engine.layers[0].w_in)


def test_packed_ffn_and_router_match_the_models_own_modules():
    for name in ("tiny", "small"):  # small: grouped routing (4 groups, top-2 groups), q_lora_rank
        model, _ = load_model(name)
        torch.manual_seed(0)
        for layer in model.model.layers[model.config.first_k_dense_replace:]:
            gate = layer.mlp.gate
            gate.e_score_correction_bias.uniform_(-0.05, 0.05)
            x = torch.randn(40, model.config.hidden_size)
            weights, experts = route(gate, x)
            _, ref_weights, ref_experts = gate(x)
            order, ref_order = experts.argsort(dim=-1), ref_experts.argsort(dim=-1)
            assert torch.equal(experts.gather(1, order), ref_experts.gather(1, ref_order))
            torch.testing.assert_close(weights.gather(1, order), ref_weights.gather(1, ref_order))
    tiny_model, _ = load_model("tiny")
    with torch.no_grad():
        for layer in tiny_model.model.layers:  # dense layer 0 and MoE layers 1..3
            ffn = FFN(layer.mlp, tiny_model.config)
            ffn.pack()
            assert ffn.packed
            for tokens in (16, 512):  # 512: beyond the packed size the module itself runs
                h = torch.randn(tokens // 4, 4, tiny_model.config.hidden_size)
                torch.testing.assert_close(ffn(h), layer.mlp(h), atol=1e-5, rtol=1e-5)
    assert not FFN(model.model.layers[-1].mlp, model.config).packed  # small's experts: too many weights to pack


def test_sampling_filters_match_transformers_warpers():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for top_k, top_p in [(5, 1.0), (0, 0.7), (8, 0.5)]:
        ours = process_logits(logits, Sampling(temperature=0.7, top_p=top_p, top_k=top_k))
        ref = logits / 0.7
        if top_k:
            ref = TopKLogitsWarper(top_k)(None, ref)
        if top_p < 1:
            ref = TopPLogitsWarper(top_p)(None, ref)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_sampling_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    logits = probs.log().expand(20000, -1)
    gen = torch.Generator().manual_seed(0)
    tokens, logprobs = sample(logits, Sampling(temperature=1.0), gen)
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    torch.testing.assert_close(logprobs, probs.log()[tokens])
    greedy, _ = sample(torch.randn(4, 9), Sampling(temperature=0.0))
    topk1, _ = sample(torch.randn(4, 9).mul(0).add(torch.arange(9.0)), Sampling(top_k=1), gen)
    assert greedy.shape == (4,) and (topk1 == 8).all()


def test_cache_is_latent_only(tiny):
    model, tok = tiny
    engine = RolloutEngine(model, tok)
    c = model.config
    assert engine.cache_bytes_per_token() == c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    engine.generate(chat_ids(tok, PROMPTS[:1]), Sampling(temperature=0.0, max_tokens=3))
    assert engine._cache.shape[-1] == c.kv_lora_rank + c.qk_rope_head_dim


def test_grouped_generation_one_completion_per_row(tiny):
    model, tok = tiny
    engine = RolloutEngine(model, tok)
    a, b = chat_ids(tok, PROMPTS[:2])
    rows = [a, a, a, b, b, a]  # runs of 3, 2, 1
    out = generate_grouped(engine, rows, Sampling(temperature=0.0, max_tokens=6))
    assert [c.prompt_ids for c in out] == rows
    assert out[0].token_ids == out[1].token_ids == out[5].token_ids

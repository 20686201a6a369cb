"""Multi-token prediction: the module, its checkpoint layout, its loss, and self-speculative rollouts."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reasoner.model import load_model, model_config, save_checkpoint
from reasoner.mtp import attach_mtp, mtp_depth, mtp_layers, mtp_loss, mtp_outputs
from reasoner.params import count_parameters


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_mtp():
    model, tok = load_model("tiny")
    attach_mtp(model, 1)
    return model.eval(), tok


def test_depth_zero_is_todays_model_and_depth_one_adds_one_layer():
    plain, _ = load_model("tiny")
    model, _ = load_model("tiny")
    attach_mtp(model, 2)
    assert mtp_depth(plain) == 0 and mtp_depth(model) == 2
    assert model.config.num_mtp_layers == 2
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():  # the main model's weights and logits are unchanged by attaching MTP
        torch.testing.assert_close(plain(ids).logits, model(ids).logits)
    layer = mtp_layers(model)[0]
    assert layer.self_attn.layer_idx == model.config.num_hidden_layers
    assert type(layer.mlp).__name__ == "DeepseekV3MoE"  # layer index >= first_k_dense_replace


def test_eh_proj_concatenates_the_normed_embedding_first(tiny_mtp):
    model, _ = tiny_mtp
    layer = mtp_layers(model)[0]
    H = model.config.hidden_size
    torch.manual_seed(0)
    emb, hid = torch.randn(1, 1, H), torch.randn(1, 1, H)
    with torch.no_grad():
        layer.enorm.weight.fill_(2.0)
        layer.hnorm.weight.fill_(3.0)
        w = torch.zeros(H, 2 * H)
        w[0, 0] = 1.0   # output 0 reads input 0: the first half
        w[1, H] = 1.0   # output 1 reads input H: the second half
        layer.eh_proj.weight.copy_(w)
        out = layer.combine(emb, hid)
        rms = lambda x: x / torch.sqrt((x * x).mean(-1, keepdim=True) + model.config.rms_norm_eps)  # noqa: E731
        assert out[0, 0, 0].item() == pytest.approx(2.0 * rms(emb)[0, 0, 0].item(), rel=1e-5)
        assert out[0, 0, 1].item() == pytest.approx(3.0 * rms(hid)[0, 0, 0].item(), rel=1e-5)
        layer.enorm.weight.fill_(1.0)
        layer.hnorm.weight.fill_(1.0)
        torch.nn.init.normal_(layer.eh_proj.weight, std=model.config.initializer_range)


def test_mtp_is_causal_and_predicts_two_ahead(tiny_mtp):
    model, _ = tiny_mtp
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
        full = mtp_outputs(model, ids, hidden)[0][0]
        prefix = mtp_outputs(model, ids[:, :4], hidden[:, :4])[0][0]
    # slot i reads tokens <= i+1: slots 0..2 of the 4-token prefix equal the full sequence's
    torch.testing.assert_close(prefix[:, :3], full[:, :3], atol=1e-5, rtol=1e-5)


def test_mtp_loss_trains_the_module_only_through_its_own_weights(tiny_mtp):
    model, _ = load_model("tiny")
    attach_mtp(model, 1)
    model.train()
    ids = torch.randint(20, 60, (4, 12))
    mask = torch.ones_like(ids)
    model(input_ids=ids, attention_mask=mask)
    loss = mtp_loss(model, ids, attention_mask=mask)
    assert torch.isfinite(loss) and loss.item() > 1.0
    loss.backward()
    layer = mtp_layers(model)[0]
    assert layer.eh_proj.weight.grad is not None and layer.eh_proj.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad is not None  # the shared head learns from the MTP loss too


def test_save_and_load_in_the_published_layout(tiny_mtp, tmp_path):
    model, tok = tiny_mtp
    N = model.config.num_hidden_layers
    save_checkpoint(model, tok, tmp_path / "ckpt")
    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                 "shared_head.head.weight", "self_attn.kv_a_proj_with_mqa.weight", "mlp.gate.weight",
                 "mlp.experts.0.gate_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"):
        assert f"model.layers.{N}.{name}" in keys
    loaded, _ = load_model(tmp_path / "ckpt")
    assert mtp_depth(loaded) == 1
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2)
    assert model_config(tmp_path / "ckpt").num_mtp_layers == 1


def test_a_v3_shaped_checkpoint_written_by_hand_loads_its_mtp_weights(tiny_mtp, tmp_path):
    """Write the published layout tensor by tensor (per-expert MTP experts, shared embedding and head copies)."""
    model, tok = tiny_mtp
    N = model.config.num_hidden_layers
    save_checkpoint(model, tok, tmp_path / "src")
    with safe_open(tmp_path / "src" / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    torch.manual_seed(3)
    mine = {k: torch.randn_like(v) for k, v in tensors.items() if k.startswith(f"model.layers.{N}.")}
    mine[f"model.layers.{N}.embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
    mine[f"model.layers.{N}.shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    ckpt = tmp_path / "v3"
    (tmp_path / "src").rename(ckpt)
    save_file({**tensors, **mine}, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    (ckpt / "MANIFEST.json").unlink(missing_ok=True)  # written by hand, like a hub download: no manifest
    loaded, _ = load_model(ckpt)
    layer = mtp_layers(loaded)[0]
    torch.testing.assert_close(layer.eh_proj.weight, mine[f"model.layers.{N}.eh_proj.weight"])
    torch.testing.assert_close(layer.enorm.weight, mine[f"model.layers.{N}.enorm.weight"])
    e3 = layer.mlp.experts.gate_up_proj[3]
    torch.testing.assert_close(e3, torch.cat((mine[f"model.layers.{N}.mlp.experts.3.gate_proj.weight"],
                                              mine[f"model.layers.{N}.mlp.experts.3.up_proj.weight"])))


def test_a_checkpoint_without_mtp_still_loads(tmp_path):
    model, tok = load_model("tiny")
    save_checkpoint(model, tok, tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config.get("num_nextn_predict_layers", config.get("num_mtp_layers")) in (0, 1)  # transformers may say 1
    loaded, _ = load_model(tmp_path / "plain")
    assert mtp_depth(loaded) == 0 and loaded.config.num_mtp_layers == 0


def test_info_counts_the_published_mtp_module():
    counts = count_parameters(model_config("deepseek-v3"))
    assert counts["all"]["total"] == pytest.approx(685e9, rel=0.002)
    assert counts["mtp"]["total"] == pytest.approx(14e9, rel=0.05)
    assert counts["all"]["active"] == pytest.approx(36.6e9, rel=0.01)


# ------------------------------------------------------------------------------------ speculative decoding
from reasoner.rollout import RolloutEngine, Sampling  # noqa: E402

PROMPTS = ["What is 2+3?", "Compute 12*7, then add 5 to it.", "9-4", "7"]


def prompt_ids(tok, texts=PROMPTS):
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


def bigram_model(oracle_draft: bool, sharpen: float = 8.0):
    """Main model whose logits at slot i depend on token i only (attention and MLP outputs zeroed), so
    next-next-token probabilities are exact to compute. With oracle_draft the MTP block is the identity on
    the embedding, so it drafts from exactly the distribution the main model verifies with."""
    model, tok = load_model("tiny")
    attach_mtp(model, 1)
    torch.manual_seed(5)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            mlp = layer.mlp
            if hasattr(mlp, "experts"):
                mlp.experts.down_proj.zero_()
                mlp.shared_experts.down_proj.weight.zero_()
            else:
                mlp.down_proj.weight.zero_()
        layer = mtp_layers(model)[0]
        if oracle_draft:
            H = model.config.hidden_size
            layer.eh_proj.weight.copy_(torch.cat((torch.eye(H), torch.zeros(H, H)), dim=1))
            layer.shared_head.norm.weight.copy_(model.model.norm.weight)
        else:
            layer.eh_proj.weight.normal_(std=0.3)
    return model.eval(), tok


def transition(model) -> torch.Tensor:
    """M[a, b] = p(next = b | current = a) of a bigram_model at temperature 1."""
    with torch.no_grad():
        vocab = torch.arange(model.config.vocab_size)
        emb = model.model.embed_tokens(vocab)
        return torch.softmax(model.lm_head(model.model.norm(emb)).float(), dim=-1)


def test_greedy_speculative_is_token_for_token_the_plain_engine(tiny_mtp):
    model, tok = tiny_mtp  # random MTP: almost every draft is rejected
    ids = prompt_ids(tok)
    for m in (model, bigram_model(True)[0]):  # ... and a draft that is almost always right
        engine = RolloutEngine(m, tok)
        greedy = Sampling(temperature=0.0, max_tokens=24)
        plain = engine.generate(ids, greedy, speculative=False, return_logits=True, ignore_eos=True)
        spec = engine.generate(ids, greedy, speculative=True, return_logits=True, ignore_eos=True)
        for a, b in zip(plain, spec):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=1e-4)
    assert engine.acceptance_rate > 0.9


def test_speculative_eos_stop_strings_and_samples_match_the_plain_engine(tiny_mtp):
    model, tok = tiny_mtp
    ids = prompt_ids(tok)
    engine = RolloutEngine(model, tok)
    free = engine.generate(ids, Sampling(temperature=0.0, max_tokens=20), speculative=False, ignore_eos=True)
    eos = free[1].token_ids[5]
    stop = free[0].text[4:6]
    for stop_at in ((stop,), ()):
        e = RolloutEngine(model, tok, eos_token_ids=[eos])
        greedy = Sampling(temperature=0.0, max_tokens=20, stop=stop_at)
        a = e.generate(ids, greedy, speculative=False, num_samples=2)
        b = e.generate(ids, greedy, speculative=True, num_samples=2)
        assert [(c.token_ids, c.text, c.finish_reason, c.prompt_index, c.sample_index) for c in a] == \
               [(c.token_ids, c.text, c.finish_reason, c.prompt_index, c.sample_index) for c in b]
        assert {c.finish_reason for c in b} >= {"eos"} | ({"stop"} if stop_at else set())


@pytest.mark.parametrize("oracle", [True, False])
def test_sampled_speculative_tokens_follow_the_target_distribution(oracle):
    """Chi-square test of the marginals of tokens 2..4 against the exact bigram chain."""
    model, tok = bigram_model(oracle, sharpen=4.0)
    M = transition(model)
    prompt = prompt_ids(tok, ["3+4="])[0]
    n = 4000
    engine = RolloutEngine(model, tok, max_batch_size=n)
    out = engine.generate([prompt], Sampling(temperature=1.0, max_tokens=4, seed=7), num_samples=n, ignore_eos=True,
                          speculative=True)
    rate = engine.acceptance_rate
    assert (rate > 0.9) if oracle else (0.05 < rate < 0.9)  # both the accept and the reject branch run
    p = M[prompt[-1]]
    tokens = torch.tensor([c.token_ids for c in out])
    for i in range(1, 4):
        p = p @ M
        observed = torch.bincount(tokens[:, i], minlength=len(p)).double()
        expected = p.double() * n
        keep = expected >= 5  # pool the rare tokens into one cell
        obs = torch.cat((observed[keep], observed[~keep].sum()[None]))
        exp = torch.cat((expected[keep], expected[~keep].sum()[None]))
        chi2 = float(((obs - exp) ** 2 / exp.clamp(min=1e-9)).sum())
        df = len(obs) - 1
        assert chi2 < df + 4.0 * (2 * df) ** 0.5, (i, chi2, df)  # ~ the 99.9th percentile
    assert all(c.logprobs[1] == pytest.approx(float(torch.log(M[c.token_ids[0], c.token_ids[1]])), abs=1e-4)
               for c in out[:50])


# ------------------------------------------------------------------------------------------------ training
def test_sft_trains_the_mtp_loss_logs_and_plots_it_and_balances_its_experts(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_training import _recipe, _sft

    from reasoner.rl.plots import PANELS, plot_training

    recipe = _recipe(tmp_path, ["sft.max_steps=20", "mtp.weight=0.3", "sft.warmup_steps=0"])
    model, trainer = _sft(recipe, tmp_path / "sft")
    assert mtp_depth(model) == 1
    logged = [e["mtp_loss"] for e in trainer.state.log_history if "mtp_loss" in e]
    assert len(logged) == 2 and logged[1] < logged[0]  # logging_steps=10
    assert len(trainer.balancer.routers) == 4  # 3 MoE layers + the MTP block's
    assert trainer.balancer.history[-1]["counted"] == [True] * 4
    assert any(key == "mtp_loss" for key, _, _ in PANELS)
    assert plot_training(trainer.state.log_history, tmp_path / "training.png", "t").exists()
    save_checkpoint(model, trainer.processing_class, tmp_path / "ckpt")
    loaded, _ = load_model(tmp_path / "ckpt")
    torch.testing.assert_close(mtp_layers(loaded)[0].eh_proj.weight, mtp_layers(model)[0].eh_proj.weight)


def test_grpo_step_rolls_out_speculatively_and_keeps_the_mtp_loss_on(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_training import _recipe

    from reasoner.rl.data import grpo_dataset
    from reasoner.rl.grpo import run_grpo
    from reasoner.rl.train import training_problems

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    recipe = _recipe(tmp_path, ["grpo.max_steps=1", "mtp.weight=0.3", "mtp.grpo=true", "grpo.warmup_steps=0"])
    model, tokenizer = load_model("tiny")
    attach_mtp(model, 1)
    problems = training_problems(recipe, recipe.grpo.levels, recipe.grpo.n_prompts)
    before = mtp_layers(model)[0].eh_proj.weight.detach().clone()
    trainer = run_grpo(recipe, model, tokenizer, grpo_dataset(problems, tokenizer), tmp_path / "grpo", use_cpu=True)
    logged = trainer.state.log_history[0]
    assert logged["mtp_loss"] > 0
    engine = trainer.rollout_func.state["engine"]
    assert engine.mtp is not None and engine.stats["drafted"] > 0  # rollouts went through MTP drafting
    assert logged["mtp_acceptance"] == pytest.approx(engine.acceptance_rate)  # one step, one rollout call
    assert not torch.equal(before, mtp_layers(model)[0].eh_proj.weight)


def test_speculative_compacts_the_batch_as_rows_finish(tiny_mtp):
    model, tok = tiny_mtp
    prompts = prompt_ids(tok, [f"{a}+{b}=?" * (1 + a % 3) for a, b in zip(range(10), range(7, 17))])
    free = RolloutEngine(model, tok).generate(prompts, Sampling(temperature=0.0, max_tokens=16), speculative=False)
    counts = {}
    for c in free:
        for t in set(c.token_ids[:4]):
            counts[t] = counts.get(t, 0) + 1
    eos = max((t for t in counts if 0 < counts[t] < len(prompts)), key=lambda t: counts[t])
    plain = RolloutEngine(model, tok, eos_token_ids=[eos]).generate(prompts, Sampling(temperature=0.0, max_tokens=16),
                                                                    speculative=False)
    engine = RolloutEngine(model, tok, eos_token_ids=[eos])
    spec = engine.generate(prompts, Sampling(temperature=0.0, max_tokens=16), speculative=True, return_logits=True)
    assert engine.stats["compactions"] >= 1
    assert [(c.token_ids, c.finish_reason) for c in spec] == [(c.token_ids, c.finish_reason) for c in plain]
    assert all(c.logits.shape[0] == len(c.token_ids) for c in spec)


def test_mtp_attaches_through_a_lora_wrapper():
    from reasoner.rl.lora import with_lora
    from reasoner.rl.recipe import LoraConfig

    model, _ = load_model("tiny")
    wrapped = with_lora(model, LoraConfig(enabled=True, r=4))
    attach_mtp(wrapped, 1)
    assert mtp_depth(wrapped) == 1 and mtp_depth(model) == 1


def test_speculative_with_a_one_token_prompt_matches_the_plain_engine(tiny_mtp):
    model, tok = tiny_mtp  # a one-token prompt's first draft reads the padding slot before it
    ids = [prompt_ids(tok, ["7"])[0], prompt_ids(tok)[1]]
    engine = RolloutEngine(model, tok)
    plain = engine.generate(ids, Sampling(temperature=0.0, max_tokens=10), speculative=False, ignore_eos=True)
    spec = engine.generate(ids, Sampling(temperature=0.0, max_tokens=10), speculative=True, ignore_eos=True,
                           return_logits=True)
    assert [c.token_ids for c in spec] == [c.token_ids for c in plain]
    assert all(torch.isfinite(c.logits).all() for c in spec)
    assert engine.stats["drafted"] > 0


def test_speculative_prefill_in_groups_changes_nothing(tiny_mtp):
    model, tok = tiny_mtp
    ids = prompt_ids(tok)
    whole = RolloutEngine(model, tok).generate(ids, Sampling(temperature=0.0, max_tokens=12), num_samples=2)
    grouped = RolloutEngine(model, tok, prefill_budget=1).generate(ids, Sampling(temperature=0.0, max_tokens=12),
                                                                   num_samples=2)
    assert [c.token_ids for c in whole] == [c.token_ids for c in grouped]

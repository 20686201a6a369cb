"""The model from YAML, the tokenizer, checkpoints and parameter counts, on the real tiny config."""
from __future__ import annotations

import json

import pytest
import torch

from reasoner.errors import ConfigError, ReasonerError
from reasoner.model import ModelSpec, load_model, model_config, read_run_metadata, save_checkpoint
from reasoner.params import count_parameters
from reasoner.tokenizer import builtin_tokenizer


def test_tiny_is_a_deepseek_v3_moe_with_mla(tiny):
    model, _ = tiny
    config = model.config
    assert type(model).__name__ == "DeepseekV3ForCausalLM"
    assert config.kv_lora_rank == 32 and config.qk_rope_head_dim == 16
    moe_layers = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    assert len(moe_layers) == config.num_hidden_layers - config.first_k_dense_replace
    assert moe_layers[0].gate.e_score_correction_bias.shape == (config.n_routed_experts,)
    assert 1e6 <= sum(p.numel() for p in model.parameters()) <= 5e6


def test_forward_backward(tiny):
    model, tokenizer = tiny
    batch = tokenizer(["<|user|>12+7<|assistant|><think>12+7=19</think><answer>19</answer>"],
                      return_tensors="pt")
    model.zero_grad()
    out = model(**batch, labels=batch.input_ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2
    model.zero_grad()


def test_tokenizer_is_deterministic_and_reversible():
    a, b = builtin_tokenizer(), builtin_tokenizer()
    text = "<|user|>What is 3*(4-1)?\n<|assistant|><think>4-1=3\n3*3=9</think><answer>9</answer>"
    assert a.get_vocab() == b.get_vocab()
    ids = a(text).input_ids
    assert ids == b(text).input_ids
    assert a.decode(ids) == text
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(a(tag).input_ids) == 1, f"{tag} must be a single token"


def test_chat_template_puts_reasoning_in_think_and_answer():
    tokenizer = builtin_tokenizer()
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2"},
         {"role": "assistant", "content": "4", "reasoning_content": "2+2=4"}], tokenize=False)
    assert rendered == "<|user|>2+2<|assistant|><think>2+2=4</think><answer>4</answer><eos>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "2+2"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == "<|user|>2+2<|assistant|>"


def test_save_and_load_round_trip_gives_identical_logits(tiny, tiny_checkpoint):
    model, tokenizer = tiny
    loaded, loaded_tokenizer = load_model(tiny_checkpoint)
    batch = tokenizer(["<|user|>1+2-3<|assistant|>", "<|user|>9*9<|assistant|><think>"], return_tensors="pt",
                      padding=True)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert read_run_metadata(tiny_checkpoint)["purpose"] == "tests"
    assert not list(tiny_checkpoint.parent.glob(".tiny.*")), "staging directories must not be left behind"


def test_checkpoint_without_our_metadata_loads_like_a_hub_download(tmp_path, tiny):
    """A plain save_pretrained directory (what a hub download is) goes through the same function."""
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_model(tmp_path)
    assert read_run_metadata(tmp_path) == {}
    assert loaded.config.n_routed_experts == model.config.n_routed_experts


def test_overwriting_a_checkpoint_replaces_it_whole(tmp_path, tiny):
    model, tokenizer = tiny
    target = tmp_path / "ckpt"
    save_checkpoint(model, tokenizer, target, {"version": 1})
    save_checkpoint(model, tokenizer, target, {"version": 2})
    assert read_run_metadata(target)["version"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("name, total, active", [
    ("deepseek-v3", 684.5e9, 37e9),  # 671B main + the MTP module as published (685B)
    ("deepseek-v2-lite", 15.7e9, 2.4e9),
])
def test_published_shapes_match_the_reports(name, total, active):
    counts = count_parameters(model_config(name))
    assert counts["all"]["total"] == pytest.approx(total, rel=0.005)
    assert counts["all"]["active"] == pytest.approx(active, rel=0.03)
    assert counts["routed_experts"]["total"] > 0.9 * counts["all"]["total"]


def write(tmp_path, text):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return path


TINY_ARCH = "architecture:\n  hidden_size: 32\n  num_hidden_layers: 2\n  num_attention_heads: 2\n  n_routed_experts: 4\n"


def test_misspelt_key_names_file_path_and_close_match(tmp_path):
    path = write(tmp_path, "name: x\n" + TINY_ARCH + "  num_expert_per_tok: 2\n")
    with pytest.raises(ConfigError) as err:
        ModelSpec.load(path)
    message = str(err.value)
    assert str(path) in message and "architecture" in message
    assert "num_expert_per_tok" in message and "did you mean 'num_experts_per_tok'" in message


@pytest.mark.parametrize("line, expected", [
    ("  kv_lora_rank: big\n", "architecture.kv_lora_rank: got 'big', expected integer"),
    ("  kv_lora_rank: 0\n", "architecture.kv_lora_rank: got 0, expected integer >= 1"),
    ("  hidden_act: swish\n", "one of 'silu', 'gelu', 'relu'"),
])
def test_wrong_type_or_range_is_one_readable_error(tmp_path, line, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        ModelSpec.load(write(tmp_path, "name: x\n" + TINY_ARCH + line))


def test_missing_file_and_inconsistent_shapes(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        ModelSpec.load(tmp_path / "nope.yaml")
    with pytest.raises(ReasonerError, match="divisible by n_group"):
        ModelSpec.load(write(tmp_path, "name: x\n" + TINY_ARCH + "  n_group: 3\n"))


def test_fresh_model_is_seeded(tiny):
    again, _ = load_model("tiny")
    model, _ = tiny
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

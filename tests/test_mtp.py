"""Multi-token prediction: the module, its checkpoint layout, its loss, and self-speculative rollouts."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reasoner.model import load_model, model_config, save_checkpoint
from reasoner.mtp import attach_mtp, mtp_depth, mtp_hidden_states, mtp_layers, mtp_loss
from reasoner.params import count_parameters


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        full = mtp_hidden_states(model, ids, hidden)[0]
        prefix = mtp_hidden_states(model, ids[:, :4], hidden[:, :4])[0]
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

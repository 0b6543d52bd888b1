"""Turning cached keys to new positions: exact against the model's own rotary embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from homer.adapter import ModelAdapter
from homer.positions import compact_positions, rotate_half, turn_keys
from tests.tiny import HEAD_DIM, KV_HEADS, make_tiny_model_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("rope") / "llama", arch="llama")


ROPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("rope", list(ROPES))
def test_turned_keys_equal_keys_rotated_at_the_new_positions(llama_dir: Path, rope: str) -> None:
    overrides = {}
    if ROPES[rope] is not None:
        overrides["rope_parameters"] = {"rope_theta": 10000.0, **ROPES[rope]}
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32, **overrides)
    adapter = ModelAdapter(model)
    if rope == "yarn":  # the case where the rotary module scales cos and sin
        assert adapter.rotary_emb.attention_scaling != 1.0
    torch.manual_seed(0)
    raw = torch.randn(1, KV_HEADS, 12, HEAD_DIM)
    old = torch.tensor([0, 1, 2, 7, 9, 3, 4, 8, 11, 5, 6, 12])  # gappy, repeated ranges
    new = compact_positions(old)
    probe = torch.zeros(1, 12, 1)
    at_old = apply_rotary_pos_emb(raw, raw, *adapter.rotary(probe, old)["full_attention"])[1]
    at_new = apply_rotary_pos_emb(raw, raw, *adapter.rotary(probe, new)["full_attention"])[1]
    turned = turn_keys(at_old, *adapter.turning(new - old))
    torch.testing.assert_close(turned, at_new, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(at_old, at_new)


def test_turning_back_and_forth_is_the_identity() -> None:
    torch.manual_seed(1)
    keys = torch.randn(1, 2, 5, 8)
    angles = torch.rand(1, 5, 4) * 6.0
    angles = torch.cat([angles, angles], dim=-1)
    there = turn_keys(keys, angles.cos(), angles.sin())
    back = turn_keys(there, (-angles).cos(), (-angles).sin())
    torch.testing.assert_close(back, keys, atol=1e-5, rtol=1e-5)


def test_rotate_half_and_compact_positions() -> None:
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]
    assert compact_positions(torch.tensor([0, 5, 5, 2, 9])).tolist() == [0, 1, 2, 3, 4]


def test_partial_rotary_turns_only_the_rotary_dimensions() -> None:
    """Phi-3 style: the first `rotary_dim` dimensions carry position, the rest pass through."""
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_rope

    torch.manual_seed(2)
    raw = torch.randn(1, 2, 5, 8)
    inv_freq = 1.0 / (100.0 ** (torch.arange(0, 4, 2).float() / 4))  # rotary_dim 4 of 8

    def rope(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions[None, :, None].float() * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    old, new = torch.tensor([0, 3, 1, 4, 2]), torch.arange(5)
    at_old = phi3_rope(raw, raw, *rope(old))[1]
    turned = turn_keys(at_old, *rope(new - old))
    torch.testing.assert_close(turned, phi3_rope(raw, raw, *rope(new))[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(turned[..., 4:], raw[..., 4:])
    with pytest.raises(ValueError, match="does not fit"):
        turn_keys(torch.zeros(1, 1, 3, 8), torch.ones(1, 3, 10), torch.zeros(1, 3, 10))

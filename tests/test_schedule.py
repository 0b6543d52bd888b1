"""Property tests of the tree's arithmetic: plan sizes and layer schedule (no model)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from homer.chunking import leaf_positions, make_leaf
from homer.config import HomerConfig, default_warmup_layers
from homer.schedule import LayerSchedule, Plan, fit_warmup


@st.composite
def schedules(draw: st.DrawFn) -> LayerSchedule:
    layers = draw(st.integers(min_value=1, max_value=96))
    height = draw(st.integers(min_value=0, max_value=layers - 1))
    warmup = draw(st.integers(min_value=0, max_value=layers - 1 - height))
    return LayerSchedule(layers, warmup, height)


@given(schedules())
@settings(max_examples=400, deadline=None)
def test_layers_cover_each_layer_once_along_any_leaf_to_root_path(s: LayerSchedule) -> None:
    path = [layer for level in range(s.height + 1) for layer in s.layers(level)]
    assert path == list(range(s.num_layers))
    assert all(len(s.layers(level)) >= 1 for level in range(s.height + 1))


@given(schedules())
@settings(max_examples=200, deadline=None)
def test_levels_get_equal_shares_and_leaves_absorb_the_leftover(s: LayerSchedule) -> None:
    uppers = [len(s.layers(level)) for level in range(1, s.height + 1)]
    assert all(n == s.layers_per_level for n in uppers)
    assert len(s.layers(0)) == s.warmup + s.layers_per_level + s.leftover
    assert 0 <= s.leftover < s.height + 1


def test_paper_schedule_for_llama2_7b() -> None:
    # 32 layers, 12 warm-up, height 3: 5 layers per level, none left over.
    s = LayerSchedule(32, 12, 3)
    assert (s.layers_per_level, s.leftover) == (5, 0)
    assert s.layers(0) == range(0, 17)
    assert s.layers(3) == range(27, 32)


def test_default_warmup_scales_with_depth() -> None:
    assert default_warmup_layers(32) == 16
    assert default_warmup_layers(30) == 15
    assert default_warmup_layers(64) == 32
    assert default_warmup_layers(6) == 3


def test_fit_warmup_lowers_warmup_only_as_needed() -> None:
    assert fit_warmup(30, 11, 3) == 11
    assert fit_warmup(6, 2, 4) == 1
    with pytest.raises(ValueError, match="Raise max_chunk_len"):
        fit_warmup(4, 1, 4)


def test_too_tall_a_tree_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="needs at least"):
        LayerSchedule(4, 2, 3)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    prefix = draw(st.integers(0, 40))
    suffix = draw(st.integers(0, 40))
    max_chunk = draw(st.integers(prefix + suffix + 2, prefix + suffix + 600))
    context = draw(st.integers(1, 50_000))
    target = draw(st.integers(prefix + suffix + 1, max_chunk))
    return Plan(context, prefix, suffix, max_chunk, target)


@given(plans())
@settings(max_examples=400, deadline=None)
def test_plan_is_a_full_binary_tree_that_fits(plan: Plan) -> None:
    assert plan.num_chunks == 2**plan.height
    assert plan.num_chunks >= plan.raw_chunks
    assert plan.raw_chunks == math.ceil(plan.context_len / plan.per_chunk)
    lengths = plan.slice_lengths()
    assert sum(lengths) == plan.context_len
    assert max(lengths) - min(lengths) <= 1
    assert max(lengths) <= plan.per_chunk
    # A merged node (two children at their keep length) never exceeds a chunk.
    merged = 2 * plan.child_keep - plan.prefix_len - plan.suffix_len
    assert merged <= plan.max_chunk_len
    # The root's children together can always fill the root.
    if plan.height >= 1:
        root_children = 2 * (plan.keep_at(plan.height - 1) - plan.prefix_len - plan.suffix_len)
        assert root_children >= plan.final_len - plan.prefix_len - plan.suffix_len
        assert root_children + plan.prefix_len + plan.suffix_len <= plan.max_chunk_len + 1
    assert plan.final_len == min(
        plan.target_len, plan.prefix_len + plan.context_len + plan.suffix_len
    )


@given(plans(), st.data())
@settings(max_examples=100, deadline=None)
def test_leaves_share_one_position_range_and_suffix_positions(
    plan: Plan, data: st.DataObject
) -> None:
    if plan.num_chunks > 64:
        return
    prefix = torch.arange(plan.prefix_len)
    context = torch.arange(plan.context_len) + 1000
    suffix = torch.arange(plan.suffix_len) + 500
    leaves = [make_leaf(plan, i, prefix, context, suffix) for i in range(plan.num_chunks)]
    assert torch.equal(
        torch.cat(
            [
                leaf.token_ids[plan.prefix_len : len(leaf.token_ids) - plan.suffix_len]
                for leaf in leaves
            ]
        ),
        context,
    )
    suffix_positions = {
        tuple(leaf.positions[len(leaf.positions) - plan.suffix_len :].tolist()) for leaf in leaves
    }
    assert len(suffix_positions) == 1
    for leaf in leaves:
        assert leaf.positions[0] == 0 or plan.prefix_len == 0
        assert len(leaf.token_ids) <= plan.max_chunk_len


def test_leaf_positions_leave_a_gap_for_a_short_slice() -> None:
    assert leaf_positions(2, 3, 2, 5).tolist() == [0, 1, 2, 3, 4, 7, 8]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_chunk_len": 4},
        {"target_len": 0},
        {"max_chunk_len": 64, "target_len": 128},
        {"warmup_layers": -1},
        {"bias": "sometimes"},
        {"reduction": "random"},
        {"positions": "shuffled"},
        {"rare_word_boost": -1.0},
        {"rare_word_boost": True},
        {"rare_word_boost": "high"},
        {"run_radius": -1},
        {"run_radius": 2.5},
        {"run_radius": True},
        {"keep_facts": 1},
        {"keep_facts": "yes"},
        {"sibling_budget": "equal"},
        {"sibling_budget": True},
    ],
)
def test_config_rejects_bad_values_with_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HomerConfig(**kwargs)  # type: ignore[arg-type]


def test_keep_facts_is_on_with_spans_and_off_with_the_paper_rule() -> None:
    def resolved(**kwargs: object) -> bool:
        config = HomerConfig(**kwargs)  # type: ignore[arg-type]
        return config.resolve(num_layers=30, window=8192).keep_facts

    assert resolved() is True
    assert resolved(reduction="paper") is False
    assert resolved(keep_facts=False) is False
    assert resolved(reduction="paper", keep_facts=True) is True


def test_sibling_budgets_are_halves_unless_shared_is_asked_for() -> None:
    def resolved(**kwargs: object) -> str:
        config = HomerConfig(**kwargs)  # type: ignore[arg-type]
        return config.resolve(num_layers=30, window=8192).sibling_budget

    assert resolved() == "halves"
    assert resolved(reduction="paper") == "halves"
    assert resolved(sibling_budget="shared") == "shared"
    assert resolved(reduction="paper", sibling_budget="shared") == "shared"


def test_config_resolves_defaults_from_the_model() -> None:
    resolved = HomerConfig().resolve(num_layers=30, window=8192)
    assert (resolved.max_chunk_len, resolved.target_len, resolved.warmup_layers) == (4096, 4096, 15)
    with pytest.raises(ValueError, match="context window"):
        HomerConfig(max_chunk_len=9000).resolve(num_layers=30, window=8192)


@pytest.mark.parametrize(
    ("field", "on", "chosen"),
    [("rare_word_boost", 4.0, 1.0), ("run_radius", 8, 3)],
)
def test_reduction_extras_default_on_for_spans_and_off_for_the_paper_rule(
    field: str, on: float, chosen: float
) -> None:
    """The rarity prior and runs are ours, not the paper's: on by default with whole words, off
    with the paper's rule unless asked for, and 0 turns them off."""

    def resolved(**kwargs: object) -> float:
        config = HomerConfig(**kwargs)  # type: ignore[arg-type]
        return float(getattr(config.resolve(num_layers=30, window=8192), field))

    assert resolved() == on
    assert resolved(reduction="paper") == 0
    assert resolved(reduction="paper", **{field: int(chosen)}) == chosen
    assert resolved(**{field: 0}) == 0

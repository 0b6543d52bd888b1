"""Property tests of the tree's arithmetic: plan sizes and layer schedule (no model)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from homer.chunking import leaf_positions, make_leaf
from homer.config import Ablations, HomerConfig, default_warmup_layers
from homer.pruning import PaperPruning, PruningRule, SpanPruning
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
        {"max_chunk_len": True},
        {"target_len": 0},
        {"max_chunk_len": 64, "target_len": 128},
        {"warmup_layers": -1},
        {"pruning": "paper"},
        {"pruning": None},
    ],
)
def test_config_rejects_bad_values_with_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HomerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "kwargs"),
    [
        (SpanPruning, {"rare_word_boost": -1.0}),
        (SpanPruning, {"rare_word_boost": True}),
        (SpanPruning, {"rare_word_boost": "high"}),
        (SpanPruning, {"run_radius": -1}),
        (SpanPruning, {"run_radius": 2.5}),
        (SpanPruning, {"run_radius": True}),
        (SpanPruning, {"keep_facts": 1}),
        (SpanPruning, {"keep_facts": "yes"}),
        (SpanPruning, {"sibling_budget": "equal"}),
        (PaperPruning, {"sibling_budget": True}),
    ],
)
def test_rules_reject_bad_values_with_value_error(
    rule: type[PruningRule], kwargs: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        rule(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"calibrated_bias": "sometimes"}, {"position_mask": 1}, {"compact_positions": None}]
)
def test_ablations_reject_non_booleans(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Ablations(**kwargs)  # type: ignore[arg-type]


def test_facts_are_reserved_only_against_runs() -> None:
    assert SpanPruning().reserves_facts is True
    assert SpanPruning(keep_facts=False).reserves_facts is False
    assert SpanPruning(run_radius=0).reserves_facts is False  # no score is lent to push them out


def test_the_default_rule_is_spans_with_the_measured_settings_and_halves() -> None:
    rule = HomerConfig().resolve(num_layers=30, window=8192).pruning
    assert rule == SpanPruning()
    assert (rule.rare_word_boost, rule.run_radius, rule.keep_facts) == (4.0, 8, True)
    assert rule.sibling_budget == "halves" and not rule.shares_budget
    assert PaperPruning().sibling_budget == "halves"
    assert SpanPruning(sibling_budget="shared").shares_budget
    assert PaperPruning(sibling_budget="shared").shares_budget


def test_each_rule_calibrates_the_way_it_scores() -> None:
    assert PaperPruning.calibration_mode == "plain"  # the paper: ordinary text, ordinary last token
    assert SpanPruning.calibration_mode == "template"


def test_a_rules_settings_name_every_field_so_the_memo_key_cannot_forget_one() -> None:
    """The memo key and a cache's record come from `settings()`: a new field of a rule (or of a
    user's subclass) is in it without anyone listing it."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Wider(SpanPruning):
        window: int = 3

    assert Wider().settings() == {**SpanPruning().settings(), "window": 3}
    assert Wider(window=4).settings() != Wider().settings()
    assert PaperPruning().settings() == {"rule": "paper", "sibling_budget": "halves"}


def test_the_default_content_key_settings_are_those_caches_were_saved_under() -> None:
    """Re-ingesting a document finds a cache saved before rules were objects: the default's
    key settings are the old `dataclasses.asdict(HomerConfig(...))`, field for field."""
    old = {
        "max_chunk_len": 512,
        "target_len": None,
        "warmup_layers": None,
        "bias": "calibrated",
        "reduction": "spans",
        "merge_mask": "sequence",
        "rare_word_boost": None,
        "positions": "compact",
        "run_radius": None,
        "keep_facts": None,
        "sibling_budget": None,
    }
    assert HomerConfig(max_chunk_len=512).key_settings() == old
    assert HomerConfig(pruning=PaperPruning()).key_settings()["pruning"]["rule"] == "paper"
    assert HomerConfig(pruning=SpanPruning(run_radius=3)).key_settings() != {
        **old,
        "max_chunk_len": None,
    }


def test_config_resolves_defaults_from_the_model() -> None:
    resolved = HomerConfig().resolve(num_layers=30, window=8192)
    assert (resolved.max_chunk_len, resolved.target_len, resolved.warmup_layers) == (4096, 4096, 15)
    with pytest.raises(ValueError, match="context window"):
        HomerConfig(max_chunk_len=9000).resolve(num_layers=30, window=8192)

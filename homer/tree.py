"""The depth-first merge tree: leaves through the lower layers, pairwise merges up to the root.

`run_tree` composes the pure pieces (plan, chunking, significance, merging) with the model
adapter. It evaluates the tree post-order: finish the left subtree, then the right, then merge,
so only token ids exist for chunks not reached yet and at most one finished sibling per level is
alive; peak memory grows with the tree's height, not the document (ALGORITHM.md §7). How a
node scores and prunes its tokens is the pruning rule's business (`homer.pruning`). It knows
nothing of prompts, tokenizers or files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from homer.adapter import ModelAdapter
from homer.chunking import make_leaf
from homer.merging import NodeState, apply_keep, merge_nodes
from homer.pruning import PruningRule, Scores, WordTables
from homer.schedule import LayerSchedule, Plan
from homer.significance import last_query_logits, share_budget

if TYPE_CHECKING:
    from homer.calibration import CalibrationNeeded


@dataclass(frozen=True)
class ProgressEvent:
    """One finished step of compression, for progress bars and tests.

    Attributes:
        stage: `"calibrate"`, `"leaf"` or `"merge"`.
        done / total: steps finished and steps in all, for this stage kind (`leaf` and `merge`
            share one count: the tree's `2 * chunks - 1` nodes).
        level: tree level of the node (0 = leaf).
        alive: node states held in memory right now, counted by the garbage collector's view.
        calibration: on the `"calibrate"` event with `done == 0`, sent before a bias is
            measured: for which chunk size and why it could not be reused.
    """

    stage: str
    done: int
    total: int
    level: int = 0
    alive: int = 0
    calibration: CalibrationNeeded | None = None


ProgressCallback = Callable[[ProgressEvent], None]


class _Node(NodeState):
    """A `NodeState` the driver tracks for the memory invariant (weakly, so counting is honest)."""

    __eq__ = object.__eq__  # identity, so nodes can sit in a WeakSet
    __hash__ = object.__hash__


@dataclass(frozen=True)
class TreeInputs:
    """Token ids of the three prompt parts, `(P,)`, `(C,)`, `(S,)` int64, and what the pruning
    rule knows of the whole document (`tables`: word ids `(C,)` and any per-word tables)."""

    prefix: torch.Tensor
    context: torch.Tensor
    suffix: torch.Tensor
    tables: WordTables


@dataclass(frozen=True)
class _Scored:
    """A node after its stage's layers, and its scores for pruning (None when the node needs
    no pruning)."""

    node: NodeState
    scores: Scores | None = None


@dataclass(frozen=True)
class _Memoised:
    """A finished subtree and the word id of its first document token when it was computed.

    Its nodes carry word ids numbered over that whole document; an edit before the subtree that
    keeps the tokens but not the words (" 12" for " 1 2") renumbers them, so a reuse shifts them
    by the difference."""

    scored: _Scored
    first_word: int


class SubtreeMemo:
    """Finished subtrees keyed by their exact input, for many compressions of similar documents.

    A subtree's result depends only on its tokens, the plan's sizes, its level and the pruning
    rule, so documents that share whole chunks (an edited file, a benchmark's haystack with a
    moved needle) can reuse them bit for bit. Holds at most `capacity` nodes (least recently used
    go first); memoised nodes stay in memory, which `ProgressEvent.alive` counts honestly.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._nodes: OrderedDict[str, _Memoised] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> _Memoised | None:
        node = self._nodes.get(key)
        if node is None:
            self.misses += 1
            return None
        self._nodes.move_to_end(key)
        self.hits += 1
        return node

    def put(self, key: str, node: _Memoised) -> None:
        self._nodes[key] = node
        self._nodes.move_to_end(key)
        while len(self._nodes) > self.capacity:
            self._nodes.popitem(last=False)


def _renumbered(node: NodeState, shift: int) -> NodeState:
    """`node` with its document words' ids moved by `shift` (the prompt's -1 stay)."""
    if shift == 0:
        return node
    words = node.word_ids
    return dataclasses.replace(node, word_ids=torch.where(words >= 0, words + shift, words))


class TreeRunner:
    """Runs one document through the merge tree.

    Args:
        adapter: the model.
        plan: sizes of the tree.
        schedule: layer ranges per level.
        rule: how nodes score and keep their tokens, and how siblings share room.
        bias: `(num_layers, max_distance)` calibration bias, or None for raw logits.
        position_mask: in merged nodes, also forbid attending to larger position ids (an
            ablation; `homer.config.Ablations`).
        progress: called after every node.
        memo: finished subtrees to reuse (`SubtreeMemo`).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        plan: Plan,
        schedule: LayerSchedule,
        rule: PruningRule,
        bias: torch.Tensor | None,
        *,
        position_mask: bool = False,
        progress: ProgressCallback | None = None,
        memo: SubtreeMemo | None = None,
    ) -> None:
        self.adapter = adapter
        self.plan = plan
        self.schedule = schedule
        self.rule = rule
        self.bias = bias
        # Read at every scored node: kept on the model's device once, not copied there each time.
        self._device_bias = None if bias is None else bias.to(adapter.device)
        self.position_mask = position_mask
        self.progress = progress
        self.memo = memo
        self._alive: weakref.WeakSet[_Node] = weakref.WeakSet()
        self._done = 0
        self.max_alive = 0

    @functools.cached_property
    def _setup_digest(self) -> str:
        """Everything besides its tokens that a subtree's result depends on, as one digest:
        the model object, the bias values, the plan, the layer schedule and every setting of
        the rule (its fields, whatever they are)."""
        digest = hashlib.sha256()
        digest.update(repr((id(self.adapter.model), self.plan, self.position_mask)).encode())
        digest.update(
            repr([self.schedule.layers(level) for level in range(self.plan.height + 1)]).encode()
        )
        digest.update(json.dumps(self.rule.settings(), sort_keys=True, default=str).encode())
        digest.update(type(self.rule).__qualname__.encode())
        if self.bias is not None:
            digest.update(self.bias.numpy().tobytes())
        return digest.hexdigest()

    # -- one node ----------------------------------------------------------------------------

    def _track(self, node: NodeState) -> _Node:
        tracked = _Node(**vars(node))
        self._alive.add(tracked)
        self.max_alive = max(self.max_alive, len(self._alive))
        return tracked

    def _run_stage(self, node: NodeState, level: int, tables: WordTables) -> _Scored:
        """Run the node's layers and score its tokens at the stage's last layer (unpruned)."""
        layers = self.schedule.layers(level)
        # The stage's last layer, or a hybrid model's last full-attention layer in it: a sliding
        # layer's query never reads past its window (ALGORITHM.md §4).
        last = self.adapter.scoring_layer(layers)
        rope = self.adapter.rotary(node.hidden, node.positions)
        mask = self.adapter.attention_mask(
            node.hidden, node.positions if self.position_mask else None
        )
        run = self.adapter.run_layers(
            node.hidden, rope, layers, query_layers=frozenset({last}), mask=mask
        )
        node = NodeState(
            hidden=run.hidden,
            token_ids=node.token_ids,
            positions=node.positions,
            word_ids=node.word_ids,
            keys=[*node.keys, *run.keys],
            values=[*node.values, *run.values],
        )
        # A child under shared budgets may lose room to its sibling, so it is always scored.
        if node.length <= self.plan.keep_at(level) and not self._waits_for_parent(level):
            return _Scored(node)
        keys = run.keys[last - layers.start][0]
        logits = last_query_logits(run.queries[last], keys, run.scaling[last])
        layer_bias = None if self._device_bias is None else self._device_bias[last]
        base = self.rule.significance(logits, node.positions.to(logits.device), layer_bias)
        prunable = self._prunable(node.length, base.device)
        words = node.word_ids.to(base.device)
        return _Scored(node, self.rule.score(base, prunable, words, tables))

    def _prune(self, scored: _Scored, keep: int, tables: WordTables) -> NodeState:
        """The node cut to `keep` tokens (itself when it is no longer)."""
        node = scored.node
        if node.length <= keep:
            return node
        if scored.scores is None:
            raise RuntimeError("a node longer than its target was not scored")
        device = scored.scores.ranked.device
        prunable = self._prunable(node.length, device)
        words = node.word_ids.to(device)
        return apply_keep(node, self.rule.select(scored.scores, prunable, words, tables, keep))

    def _waits_for_parent(self, level: int) -> bool:
        """Under shared budgets a child is pruned by its parent, which splits the room."""
        return self.rule.shares_budget and level < self.plan.height

    def _finish(self, scored: _Scored, level: int, tables: WordTables) -> _Scored:
        """With halves, a node prunes itself to its level's target at once (the paper); with
        shared budgets only the root does, and a child waits for its parent to split the room."""
        if self._waits_for_parent(level):
            return dataclasses.replace(scored, node=self._track(scored.node))
        return _Scored(self._track(self._prune(scored, self.plan.keep_at(level), tables)))

    def _shares(self, left: _Scored, right: _Scored, keep: int) -> tuple[int, int]:
        """Target lengths of two siblings that would each keep `keep` with halves, from one
        ranking of both (`homer.significance.share_budget`)."""
        protected, pools = [], []
        for child in (left, right):
            if child.scores is None:
                raise RuntimeError("a child under shared budgets was not scored")
            ranked = child.scores.ranked
            prunable = self._prunable(child.node.length, ranked.device)
            protected.append(int((~prunable).sum()))
            pools.append(ranked[prunable])
        total = sum(min(keep - p, pool.numel()) for p, pool in zip(protected, pools, strict=True))
        from_left, from_right = share_budget(pools[0], pools[1], total)
        return protected[0] + from_left, protected[1] + from_right

    def _prunable(self, length: int, device: torch.device) -> torch.Tensor:
        mask = torch.ones(length, dtype=torch.bool, device=device)  # made there, not copied
        mask[: self.plan.prefix_len] = False
        mask[length - self.plan.suffix_len :] = False
        # The last token's query scores everyone else; it stays even with an empty suffix, so
        # `last_logits` is always the prediction after the whole prompt.
        mask[-1] = False
        return mask

    def _report(self, stage: str, level: int) -> None:
        self._done += 1
        if self.progress is not None:
            total = 2 * self.plan.num_chunks - 1
            self.progress(ProgressEvent(stage, self._done, total, level, len(self._alive)))

    # -- the tree ----------------------------------------------------------------------------

    def _leaf(self, index: int, inputs: TreeInputs) -> _Scored:
        leaf = make_leaf(self.plan, index, inputs.prefix, inputs.context, inputs.suffix)
        piece = inputs.tables.word_ids[
            leaf.start : leaf.start
            + leaf.token_ids.shape[0]
            - self.plan.prefix_len
            - self.plan.suffix_len
        ]
        words = torch.cat(
            [
                torch.full((self.plan.prefix_len,), -1, dtype=torch.long),
                piece,
                torch.full((self.plan.suffix_len,), -1, dtype=torch.long),
            ]
        )
        hidden = self.adapter.embed(leaf.token_ids)
        start = NodeState(hidden, leaf.token_ids, leaf.positions, words, [], [])
        scored = self._finish(self._run_stage(start, 0, inputs.tables), 0, inputs.tables)
        self._report("leaf", 0)
        return scored

    def _span(self, first: int, level: int) -> tuple[int, int]:
        """Document tokens `[start, stop)` of the subtree of `2**level` leaves from leaf `first`."""
        lengths = self.plan.slice_lengths()
        start = sum(lengths[:first])
        return start, start + sum(lengths[first : first + 2**level])

    def _memo_key(self, start: int, stop: int, level: int, inputs: TreeInputs) -> str:
        """The subtree over document tokens `[start, stop)` at `level`, as one digest."""
        digest = hashlib.sha256(self._setup_digest.encode())
        parts = [inputs.prefix, inputs.context[start:stop], inputs.suffix]
        if stop > start:
            # The per-word tables depend on the whole document (word counts): a moved needle
            # changes them elsewhere, so the subtree's slice of each is part of its input.
            words = inputs.tables.word_ids[start:stop]
            span = slice(int(words[0]), int(words[-1]) + 1)
            for table in (inputs.tables.rarity, inputs.tables.facts):
                if table is not None:
                    parts.append(table[span])
        for part in parts:
            digest.update(part.numpy().tobytes())
            digest.update(b"|")
        digest.update(repr(level).encode())
        return digest.hexdigest()

    def _subtree(self, first: int, level: int, inputs: TreeInputs) -> _Scored:
        if self.memo is None:
            return self._compute_subtree(first, level, inputs)
        start, stop = self._span(first, level)
        key = self._memo_key(start, stop, level, inputs)
        first_word = int(inputs.tables.word_ids[start]) if stop > start else 0
        found = self.memo.get(key)
        if found is not None:
            node = self._track(_renumbered(found.scored.node, first_word - found.first_word))
            self._done += 2 ** (level + 1) - 2  # the subtree's other nodes count as done too
            self._report("leaf" if level == 0 else "merge", level)
            return dataclasses.replace(found.scored, node=node)
        scored = self._compute_subtree(first, level, inputs)
        self.memo.put(key, _Memoised(scored, first_word))
        return scored

    def _compute_subtree(self, first: int, level: int, inputs: TreeInputs) -> _Scored:
        if level == 0:
            return self._leaf(first, inputs)
        left = self._subtree(first, level - 1, inputs)
        right = self._subtree(first + 2 ** (level - 1), level - 1, inputs)
        keep = self.plan.keep_at(level - 1)
        # With halves both children are already at `keep`, and pruning them again is a no-op.
        keep_left, keep_right = (
            self._shares(left, right, keep) if self.rule.shares_budget else (keep, keep)
        )
        merged = merge_nodes(
            self._prune(left, keep_left, inputs.tables),
            self._prune(right, keep_right, inputs.tables),
            self.plan.prefix_len,
            self.plan.suffix_len,
        )
        del left, right
        scored = self._finish(self._run_stage(merged, level, inputs.tables), level, inputs.tables)
        self._report("merge", level)
        return scored

    def run(self, inputs: TreeInputs) -> NodeState:
        """The root's state: every layer's keys and values, `plan.final_len` tokens each."""
        with torch.inference_mode():
            return self._subtree(0, self.plan.height, inputs).node

"""Region scorers: how a query rates every region from a per-region summary alone.

Axes: ``n`` patches, ``r`` regions, ``h`` heads, ``d`` head features, ``e`` scoring features,
``c`` queries in a chunk, ``k`` selected regions.

A scorer's :meth:`~RegionScorer.prepare` runs once per forward pass and returns a
:class:`Scoring`: the vectors that stand for each query, ``score_all`` (every region, used only
to pick the top k, without gradient) and, for scorers with parameters, ``score_selected`` (the
chosen regions only, with gradient).

**How a learned scorer learns.** Top-k selection has no gradient. Query-aware attention adds
``score - stopgrad(score)`` of each selected region to the attention logits of that region's
keys: zero in the forward pass, so outputs are exactly those of hard top-k selection, while in
the backward pass a region's score receives the summed gradient of its keys' logits (a
straight-through estimator). Raising the score of a region whose keys the loss wants more
attention on is then what the scorer learns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from querent.layers.linear import Linear
from querent.layers.pruning import QuestTable
from querent.layers.regions import SUMMARIES, RegionLayout, region_mean, region_summary


@dataclass(frozen=True)
class Scoring:
    """Region scores of one forward pass.

    Attributes:
        queries: (n, h, e) the vector standing for each query when it scores regions.
        score_all: ``(c, h, e) -> (h, c, r)`` score of every region.
        score_selected: ``((c, h, e), (h, c, k) region indices) -> (h, c, k)`` differentiable
            scores of the selected regions; None for scorers without parameters.
        top_regions: ``((c, h, e), k) -> (values, indices)``, each (h, c, k): the same top k
            as ``score_all(...).topk(k)`` without scoring every region, where the scorer can
            bound groups of regions (:mod:`querent.layers.pruning`); None otherwise.
    """

    queries: torch.Tensor
    score_all: Callable[[torch.Tensor], torch.Tensor]
    score_selected: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    top_regions: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] | None = None


class RegionScorer(nn.Module):
    """Base class of scorers; every scorer is built from the attention layer's sizes.

    Args:
        dim: Input features of the attention layer.
        heads: Attention heads (one score per head).
        head_dim: Features per head of the queries and keys.
        summary: How a region is summarised (a key of
            :data:`~querent.layers.regions.SUMMARIES`; the paper's is ``minmax``).
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int, summary: str = "minmax") -> None:
        super().__init__()
        self.summary = summary

    def prepare(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, layout: RegionLayout
    ) -> Scoring:
        """Summarise the regions.

        Args:
            x: (n, dim) input of the attention layer.
            q: (n, h, d) queries.
            k: (n, h, d) keys.
            layout: Region layout of the slide.
        """
        raise NotImplementedError


def quest_scores(queries: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """Quest upper bound (Tang et al., 2024) of ``q . key`` over each region's keys.

    ``sum_d max(q_d * kmin_d, q_d * kmax_d)``: per channel the max takes ``kmax`` where
    ``q_d >= 0`` and ``kmin`` where ``q_d < 0``, so the bound is two matmuls.

    Args:
        queries: (c, h, d).
        kmin: (r, h, d) region minima of keys.
        kmax: (r, h, d) region maxima of keys.

    Returns:
        (h, c, r) scores; ``scores[h, i, j] >= q_i . key`` for every key of region ``j``.
    """
    positive = queries.clamp(min=0)
    signed = torch.cat([positive, queries - positive], dim=-1)
    return torch.einsum("chd,rhd->hcr", signed, torch.cat([kmax, kmin], dim=-1))


class QuestScorer(RegionScorer):
    """The Quest bound on keys per head: the region's best possible logit for this query.

    With a summary other than ``minmax`` the bound is taken over the summary's (low, high)
    box instead (no longer a bound: the paper's summary ablation).

    Scores are monotone in the box, so a group of adjacent regions bounds its members and the
    top k regions are found exactly without scoring them all (``top_regions``, needs the
    layout's ``region_cells``).
    """

    def prepare(self, x, q, k, layout):  # noqa: D102
        kmin, kmax = region_summary(k.detach(), layout, self.summary)
        table = QuestTable.build(kmin, kmax, layout.region_cells)
        return Scoring(q.detach(), table.scores, top_regions=table.top_regions)


class MeanScorer(RegionScorer):
    """Query times the mean key of the region (the paper's mean-summary ablation)."""

    def prepare(self, x, q, k, layout):  # noqa: D102
        kmean = region_mean(k.detach(), layout)
        return Scoring(q.detach(), lambda queries: torch.einsum("chd,rhd->hcr", queries, kmean))


class RandomScorer(RegionScorer):
    """Uniform random scores, drawn anew every forward pass (the paper's random ablation)."""

    def prepare(self, x, q, k, layout):  # noqa: D102
        n_regions = layout.n_regions

        def score_all(queries: torch.Tensor) -> torch.Tensor:
            c, h, _ = queries.shape
            return torch.rand(h, c, n_regions, device=queries.device, dtype=queries.dtype)

        return Scoring(q.detach(), score_all)


class LearnedScorer(RegionScorer):
    """The paper's learned variant (as summarised; details unconfirmed).

    Regions are summarised by the min and max of their *input features* (or the (low, high)
    pair of another summary), projected by ``f_min`` and ``f_max``; a separate projection
    ``q_hat`` of each patch scores them: ``max(|q_hat . f_min(m_min)|, |q_hat . f_max(m_max)|)``
    per head.

    Args:
        dim: Input features of the attention layer.
        heads: Attention heads (one score per head).
        head_dim: Features of the scoring space per head (that of the queries and keys).
        summary: How a region is summarised (see :class:`RegionScorer`).
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int, summary: str = "minmax") -> None:
        super().__init__(dim=dim, heads=heads, head_dim=head_dim, summary=summary)
        self.heads = heads
        self.q_hat = Linear(dim, heads * head_dim, bias=False)
        self.f_min = Linear(dim, heads * head_dim)
        self.f_max = Linear(dim, heads * head_dim)

    def prepare(self, x, q, k, layout):  # noqa: D102
        x_min, x_max = region_summary(x, layout, self.summary)
        split = "n (h e) -> n h e"
        f_min = rearrange(self.f_min(x_min), split, h=self.heads)
        f_max = rearrange(self.f_max(x_max), split, h=self.heads)
        queries = rearrange(self.q_hat(x), split, h=self.heads)
        n_regions = len(f_min)
        both = rearrange(torch.cat([f_min, f_max]).detach(), "r h e -> h e r")

        def score_all(chunk: torch.Tensor) -> torch.Tensor:
            # one matmul against min and max projections side by side, then the larger |.|
            scores = torch.bmm(rearrange(chunk, "c h e -> h c e"), both).abs_()
            return torch.maximum(scores[..., :n_regions], scores[..., n_regions:])

        def score_selected(chunk: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
            head = torch.arange(self.heads, device=chunk.device)[:, None, None]
            low = torch.einsum("che,hcke->hck", chunk, f_min[selected, head]).abs()
            high = torch.einsum("che,hcke->hck", chunk, f_max[selected, head]).abs()
            return torch.maximum(low, high)

        return Scoring(queries, score_all, score_selected)


class DistanceScorer(LearnedScorer):
    """The learned scorer minus a learned multiple, per head, of the distance between regions.

    Each head's score of a region drops by ``softplus(w_h)`` times the lattice distance (in
    regions) from the query's region to it, so a head can learn to prefer regions near the
    query (``w_h`` large), or none (``w_h`` towards 0). Not in the paper: its scorer reads the
    region summaries alone, and our measures found its picks no nearer the query than random
    ones (docs/context-study.md).
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int, summary: str = "minmax") -> None:
        super().__init__(dim=dim, heads=heads, head_dim=head_dim, summary=summary)
        self.distance_weight = nn.Parameter(torch.zeros(heads))

    def prepare(self, x, q, k, layout):  # noqa: D102
        content = super().prepare(x, q, k, layout)
        regions = layout.region_cells.to(x.dtype)
        # the query's region rides along as two extra channels (region means keep it exact)
        where = regions[layout.region_of_patch][:, None].expand(-1, self.heads, -1)
        queries = torch.cat([content.queries, where], dim=-1)
        weight = nn.functional.softplus(self.distance_weight)[:, None, None]

        def score_all(chunk: torch.Tensor) -> torch.Tensor:
            distance = torch.cdist(chunk[:, 0, -2:], regions)  # (c, r)
            return content.score_all(chunk[..., :-2]) - weight.detach() * distance

        def score_selected(chunk: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
            offset = regions[selected] - chunk[None, :, None, 0, -2:].detach()  # (h, c, k, 2)
            distance = offset.norm(dim=-1)
            return content.score_selected(chunk[..., :-2], selected) - weight * distance

        return Scoring(queries, score_all, score_selected)


#: Scorers by name: the one place that lists them.
SCORERS: dict[str, type[RegionScorer]] = {
    "quest": QuestScorer,
    "learned": LearnedScorer,
    "learned_distance": DistanceScorer,
    "mean": MeanScorer,
    "random": RandomScorer,
}


def scorer_problems(name: str, summary: str) -> list[str]:
    """What :func:`make_scorer` refuses, one line per argument (``scorer``, ``summary``)."""
    problems = []
    if name not in SCORERS:
        problems.append(f"scorer: unknown {name!r}; choose one of: {', '.join(SCORERS)}")
    if summary not in SUMMARIES:
        problems.append(f"summary: unknown {summary!r}; choose one of: {', '.join(SUMMARIES)}")
    return problems


def make_scorer(
    name: str, *, dim: int, heads: int, head_dim: int, summary: str = "minmax"
) -> RegionScorer:
    """Build a scorer by name (a key of :data:`SCORERS`) reading regions through ``summary``."""
    problems = scorer_problems(name, summary)
    if problems:
        raise ValueError("; ".join(problems))
    return SCORERS[name](dim=dim, heads=heads, head_dim=head_dim, summary=summary)

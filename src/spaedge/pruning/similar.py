"""One-shot pruning from similar tasks (after Zhao & Long, arXiv 2307.04365).

This module is the algorithm, on plain data: a ``Plan`` is the pruned shape
of one trained task (the channels its pruned model kept in every adapted
layer, base indices, the same ``out_index`` the task bundle stores) and a
*task embedding*. Plan files and libraries of them are
``spaedge.train.library``; the ``similar`` schedule of the training pipeline
(``spaedge train --schedule similar --library DIR``) does, for a new task:

1. **Embedding.** The frozen base (no adapters, its own BatchNorm statistics,
   no head) reads the first ``EMBED_IMAGES`` images of the task's training
   split, unaugmented and in order; each image's penultimate feature vector
   (global-average-pooled last stage) is L2-normalised, and the embedding is
   the mean of these unit vectors. Nothing is trained, so the embedding of a
   task is the same whichever run or method produced its plan.
2. **Similarity.** Cosine between embeddings. Only plans made against the
   same base (content hash) and the same adapted layers qualify; the ``k``
   most similar are the neighbours (``--neighbours``, default 3).
3. **Vote.** Neighbour i gets weight w_i = exp(s_i / T) / sum_j exp(s_j / T)
   over the k neighbours (T = ``TEMPERATURE`` = 0.05), so the weights sum to
   1 and grow with similarity. (Plain w_i proportional to s_i would be nearly
   uniform: the base's features are non-negative after its last ReLU, so the
   cosines of task embeddings all lie in about 0.8-1; at T = 0.05 a cosine
   0.1 higher weighs e^2, about 7.4 times more.) The score of base channel c
   of layer L is sum_i w_i [c kept in L by neighbour i], in [0, 1]: the
   weighted fraction of the similar tasks that kept it.
4. **Prune once.** Channels coupled by a residual add form one dependency
   group (``spaedge.pruning.groups``); a group's channel scores are the mean of
   its producers' votes. All groups are ranked together on the raw vote (it is
   already on one scale, so no per-group normalisation), ties broken by the
   task weight's L1 magnitude (weight ``TIE_BREAK``), and the lowest go until
   the backbone's exact weight count is at the density budget (every group
   keeps at least one channel; block-SPA adapters drop whole blocks). Removal
   is ``remove_channels``: the channels are really gone.
5. **Train a few epochs** (``spaedge.train.pipeline``: the adaptation and
   final epochs run on the already pruned model; there are no recovery steps).

An alternative similarity (not implemented) would compare a few gradient
steps' per-filter Taylor scores of the new task with the library tasks'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer
from spaedge.pruning.groups import ChannelGroup, channel_groups
from spaedge.pruning.prune import _weights, density, ranked_units, remove_positions

__all__ = [
    "Plan",
    "plan_of_model",
    "task_embedding",
    "cosine",
    "nearest",
    "vote_weights",
    "channel_votes",
    "group_votes",
    "prune_by_votes",
]

EMBED_IMAGES = 256
TEMPERATURE = 0.05
TIE_BREAK = 1e-3


@dataclass
class Plan:
    """The pruned shape of one trained task and where it sits among tasks."""

    task: str
    base: str
    base_hash: str
    density: float
    kept: dict[str, list[int]]  # adapted layer -> kept base output channels
    base_channels: dict[str, int]  # adapted layer -> base output channels
    embedding: list[float]
    test_accuracy: float | None = None
    source: str = ""  # where the plan was read from
    extra: dict = field(default_factory=dict)

    def mask(self, layer: str) -> torch.Tensor:
        m = torch.zeros(self.base_channels[layer])
        m[torch.tensor(self.kept[layer], dtype=torch.long)] = 1.0
        return m


# --------------------------------------------------------------- similarity
@torch.no_grad()
def task_embedding(
    base: nn.Module, dataset, n_images: int = EMBED_IMAGES, batch_size: int = 128
) -> torch.Tensor:
    """Mean of the L2-normalised penultimate features of the frozen ``base``
    over the first ``n_images`` images of ``dataset`` (in order, unaugmented)."""
    was_training = base.training
    base.eval()
    n = min(n_images, len(dataset))
    total = None
    try:
        for start in range(0, n, batch_size):
            x, _ = dataset.batch(range(start, min(n, start + batch_size)))
            f = nn.functional.normalize(base.features(x).double(), dim=1).sum(0)
            total = f if total is None else total + f
    finally:
        base.train(was_training)
    if total is None:
        raise ValueError("cannot embed a task with no training images")
    return (total / n).float()


def cosine(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"task embeddings of different sizes ({a.numel()} vs {b.numel()}): other base?"
        )
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def nearest(
    library: Iterable[Plan],
    embedding,
    k: int = 3,
    base_hash: str | None = None,
    layers: dict[str, int] | None = None,
    exclude_task: str | None = None,
) -> list[tuple[Plan, float]]:
    """The ``k`` plans most similar to ``embedding`` (cosine), best first. Plans of
    another base, other adapted layers or (``exclude_task``) the same task name
    are left out."""
    scored = []
    for p in library:
        if base_hash is not None and p.base_hash != base_hash:
            continue
        if layers is not None and p.base_channels != layers:
            continue
        if exclude_task is not None and p.task == exclude_task:
            continue
        scored.append((p, cosine(embedding, p.embedding)))
    scored.sort(key=lambda ps: (-ps[1], ps[0].task, ps[0].source))
    return scored[: max(k, 0)]


def vote_weights(similarities: Sequence[float], temperature: float = TEMPERATURE) -> torch.Tensor:
    """w_i = exp(s_i / T) / sum_j exp(s_j / T): positive, summing to 1, larger for
    more similar tasks (T = inf gives equal weights)."""
    s = torch.as_tensor(list(similarities), dtype=torch.float64)
    if len(s) == 0:
        raise ValueError("no neighbours to vote")
    if math.isinf(temperature):
        return torch.full_like(s, 1.0 / len(s))
    return torch.softmax(s / temperature, dim=0)


def channel_votes(neighbours: Sequence[tuple[Plan, float]]) -> dict[str, torch.Tensor]:
    """Per adapted layer, sum_i w_i * kept-mask_i over the base's output channels."""
    w = vote_weights([s for _, s in neighbours])
    layers = neighbours[0][0].base_channels
    votes = {name: torch.zeros(n, dtype=torch.float64) for name, n in layers.items()}
    for (plan, _), wi in zip(neighbours, w):
        for name in votes:
            votes[name] += wi * plan.mask(name).double()
    return votes


def group_votes(
    model: nn.Module, group: ChannelGroup, votes: dict[str, torch.Tensor]
) -> torch.Tensor:
    """A group's channel scores: the mean of its producers' votes at the channels they still have."""
    s = torch.zeros(group.size, dtype=torch.float64)
    for name in group.producers:
        layer = model.get_submodule(name)
        s += votes[name][layer.out_index]
    return s / max(len(group.producers), 1)


def _magnitude(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    s = torch.zeros(group.size, dtype=torch.float64)
    with torch.no_grad():
        for name in group.producers:
            w = model.get_submodule(name).task_weight()
            s += w.abs().reshape(w.shape[0], -1).mean(1).double()
    return s / max(float(s.max()), 1e-30)


def prune_by_votes(
    model: nn.Module,
    example_input: torch.Tensor,
    votes: dict[str, torch.Tensor],
    target: float,
    *,
    min_channels: int = 1,
    block: int = 1,
    tie_break: float = TIE_BREAK,
) -> float:
    """Remove the lowest-voted channels (globally ranked, per dependency group)
    until the backbone holds at most ``target`` of the base's weights; the
    weight count is exact (each layer's kept outputs x kept inputs). Returns
    the density reached."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {target}")
    groups = channel_groups(model, example_input)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    out_group: dict[str, int] = {}
    in_group: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for n in g.producers:
            out_group[n] = gi
        for n in g.consumers:
            if n in layers:
                in_group[n] = gi
    count = [g.size for g in groups]
    base_total = sum(_weights(m, base=True) for m in layers.values())

    def layer_weights() -> int:
        total = 0
        for name, m in layers.items():
            o = count[out_group[name]] if name in out_group else m.out_channels
            i = count[in_group[name]] if name in in_group else m.in_channels
            total += o * i * m.kernel_size[0] * m.kernel_size[1]
        return total

    scores = [group_votes(model, g, votes) + tie_break * _magnitude(model, g) for g in groups]
    candidates = ranked_units(model, groups, scores, block=block, min_channels=min_channels)
    drop: dict[int, list[int]] = {}
    current = layer_weights()
    for _, gi, positions in candidates:
        if current <= target * base_total + 1e-9:
            break
        drop.setdefault(gi, []).extend(positions)
        count[gi] -= len(positions)
        current = layer_weights()
    remove_positions(model, groups, drop)
    return density(model)


def plan_of_model(
    model: nn.Module,
    *,
    task: str,
    base: str,
    base_hash: str,
    embedding,
    test_accuracy: float | None = None,
    extra: dict | None = None,
) -> Plan:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    return Plan(
        task=task,
        base=base,
        base_hash=base_hash,
        density=density(model),
        kept={n: sorted(int(i) for i in m.out_index) for n, m in layers.items()},
        base_channels={n: int(m.base_out_channels) for n, m in layers.items()},
        embedding=[float(v) for v in torch.as_tensor(embedding)],
        test_accuracy=test_accuracy,
        extra=extra or {},
    )

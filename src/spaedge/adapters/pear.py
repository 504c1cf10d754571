"""Pear (Zhong & Zhou, arXiv 2409.19733): prune whole adapters, share the important ones.

A Pear task starts as SPLoRA (``PearLoRA`` is SPLoRA plus a record of what Pear
did to the layer). Once channel pruning is over and the kept shapes are final,
``apply_pear`` runs three steps, then the final epochs train the result:

1. **Score** every adapter as a whole by first-order Taylor::

       s_l = | sum_{theta in A_l, B_l} theta * dL/dtheta |

   with dL/dtheta the gradient of the mean cross-entropy over a few fixed task
   batches (gradients accumulated over the batches before the product is
   taken; the model in eval mode so BatchNorm statistics are not touched). It
   is the first-order estimate of the loss change when the adapter's factors
   are set to zero. (For A, B of one product it equals 2 |<dL/dDelta, B A>|.)

2. **Prune** the ``prune`` fraction of adapters with the lowest scores
   (``round(prune * n)`` of the n adapters; ties by depth).

3. **Share**: each pruned position takes the factors of a kept adapter -- the
   *same* ``nn.Parameter`` objects, trained jointly by every layer that uses
   them. The runtime only accepts a source with the target's kept
   (output, input) channel counts (docs/format.md, ``shared_adapters``), so the
   candidates of a pruned position are the kept adapters of its kept shape
   (O', I'). Maps (``SHARE_MAPS``):

   - ``nearest`` (default): the candidate nearest in depth (position in the
     graph's conv order); ties go to the higher score. Neighbouring layers see
     the most similar features, so the update learned for one is the most
     plausible stand-in for the other.
   - ``important``: the highest-scoring candidate (ties: nearest in depth).
   - ``none``: no sharing; pruned adapters are simply removed.

   A pruned position with no candidate of its shape loses its adapter (the
   layer runs on its gathered base weight, its BatchNorm and bias stay
   per-task). After channel pruning this is the common case for a ResNet:
   kept counts of convs differ unless a residual group ties them, so few
   same-shape pairs remain. On the built-in ``tiny`` base (one block per
   stage) every shape class has at most two convs, so ``nearest`` and
   ``important`` pick the same source; ``none`` is the alternative that
   differs (docs/results.md, "Pear: sharing maps").

Knowledge checkpoint (``KNOWLEDGE``; the base weight is frozen and shared by
every task on the device, so nothing can be merged into it):

- ``weighted`` (default): a source s shared into pruned positions T_s is
  re-initialised so that its product is the best rank-r approximation of the
  score-weighted mean of the learned updates of every position it now serves,

      M = sum_j s_j B_j A_j / sum_j s_j,   j in {s} u T_s
      B, A = U_r sqrt(S_r), sqrt(S_r) V_r^T   (truncated SVD of M)

  M minimises sum_j s_j ||X - B_j A_j||_F^2 over all X, and by Eckart-Young
  its rank-r truncation minimises it over rank-r X: the shared adapter starts
  as the closest single update to what all its positions had learned,
  weighted by how much each mattered (the source, scored highest, dominates).
  Singular directions past the rank of M get a random A row and a zero B
  column (LoRA-style: the product is unchanged, the direction stays
  trainable). The final epochs then fine-tune from there.
- ``source``: the source keeps its own factors; the pruned adapters' updates
  are dropped (an ablation).

What a removed adapter (no compatible source) learned is lost either way.

State lives in a buffer per layer, ``pear_source``: -1 own adapter, -2 removed,
k >= 0 shares the factors of the k-th adapted layer (conv order). Checkpoints
carry it, and ``relink`` rebuilds the parameter sharing of a model restored
from a state dict. Bundles store a shared adapter once; targets are listed in
the ``shared_adapters`` metadata (``bundle_metadata``, ``link_shared``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.base import AdaptedLayer, layers_of
from spaedge.adapters.registry import Method, RankOptions, register
from spaedge.adapters.splora import SPLoRA
from spaedge.argtypes import flag
from spaedge.errors import BundleError
from spaedge.pack.format import json_field

__all__ = [
    "PearLoRA",
    "PearOptions",
    "SHARE_MAPS",
    "KNOWLEDGE",
    "adapter_scores",
    "sharing_map",
    "knowledge_init",
    "apply_pear",
    "relink",
    "link_shared",
    "shared_map",
    "bundle_metadata",
    "counts",
]

SHARE_MAPS = ("nearest", "important", "none")
KNOWLEDGE = ("weighted", "source")
OWN, REMOVED = -1, -2


@dataclass(frozen=True)
class PearOptions(RankOptions):
    pear_prune: float = flag(
        0.5, "fraction of adapters pruned after channel pruning (default {default})", parse=float
    )
    pear_share: str = flag(
        "nearest",
        "a pruned position takes the same-shape kept adapter nearest in depth (default), the "
        "most important one, or none (adapter removed)",
        choices=SHARE_MAPS,
    )
    pear_knowledge: str = flag(
        "weighted",
        "a shared adapter starts as the best rank-r fit of every update it replaces, weighted "
        "by importance (default), or keeps its own factors (source)",
        choices=KNOWLEDGE,
    )


class PearLoRA(SPLoRA):
    """SPLoRA whose adapter Pear may remove or replace by another layer's factors."""

    method = "pear"

    def __init__(self, base, rank: int = 8):
        super().__init__(base, rank=rank)
        self.register_buffer("pear_source", torch.tensor(OWN, dtype=torch.long))

    @property
    def state(self) -> int:
        return int(self.pear_source)

    def delta(self):
        return None if self.state == REMOVED else super().delta()

    def _check_prunable(self):
        if self.state != OWN:
            raise RuntimeError(
                "Pear has removed or shared this layer's adapter: prune channels before Pear"
            )

    def keep_out(self, keep):
        self._check_prunable()
        super().keep_out(keep)

    def keep_in(self, keep):
        self._check_prunable()
        super().keep_in(keep)

    def remove_adapter(self) -> None:
        self.lora_a = nn.Parameter(torch.zeros(0, self.in_channels), requires_grad=False)
        self.lora_b = nn.Parameter(torch.zeros(self.out_channels, 0), requires_grad=False)
        self.pear_source.fill_(REMOVED)

    def bundle_tensors(self):
        t = AdaptedLayer.bundle_tensors(self)
        if self.state == OWN:  # a shared adapter is stored once, with its source
            t["lora_a"] = self.lora_a.detach()
            t["lora_b"] = self.lora_b.detach()
        return t

    def load_bundle_tensors(self, t):
        if "lora_a" in t:
            super().load_bundle_tensors(t)
            self.pear_source.fill_(OWN)
        else:  # removed, or shared: link_shared points it at its source afterwards
            AdaptedLayer.load_bundle_tensors(self, t)
            self.remove_adapter()

    def extra_repr(self) -> str:
        s = {OWN: "own adapter", REMOVED: "adapter removed"}.get(
            self.state, f"shares adapter #{self.state}"
        )
        return f"{super().extra_repr()}, {s}"


def _layers(model: nn.Module) -> list[tuple[str, PearLoRA]]:
    return layers_of(model, PearLoRA, "Pear needs PearLoRA layers (adapt with method 'pear')")


def _shape(m: AdaptedLayer) -> tuple[int, int]:
    return m.out_channels, m.in_channels


# ---------------------------------------------------------------- 1. scores
def adapter_scores(model: nn.Module, data) -> dict[str, float]:
    """First-order Taylor importance of each adapter with its own factors:
    |sum over its parameters of param * dL/dparam|, L the mean loss over ``data``."""
    layers = [(n, m) for n, m in _layers(model) if m.state == OWN]
    params = [p for _, m in layers for p in (m.lora_a, m.lora_b)]
    n_total = sum(len(y) for _, y in data)
    if not n_total:
        raise ValueError("Pear's adapter scores need task data")
    grads = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
            for x, y in data:
                loss = F.cross_entropy(model(x), y) * (len(y) / n_total)
                for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                    if g is not None:
                        acc += g
    finally:
        model.train(was_training)
    scores = {}
    for k, (n, _) in enumerate(layers):
        s = sum(
            float((p.detach() * g).sum())
            for p, g in zip(params[2 * k : 2 * k + 2], grads[2 * k : 2 * k + 2])
        )
        scores[n] = abs(s)
    return scores


# ---------------------------------------------------------------- 2-3. prune and map
def sharing_map(
    shapes: dict[str, tuple[int, int]], scores: dict[str, float], pruned, rule: str = "nearest"
) -> dict[str, str | None]:
    """Source (or None: adapter removed) for each pruned position.

    ``shapes`` is in depth order (the graph's conv order); candidates are kept
    positions of the same kept (O', I')."""
    if rule not in SHARE_MAPS:
        raise ValueError(f"unknown Pear sharing map {rule!r}; known: {', '.join(SHARE_MAPS)}")
    depth = {n: i for i, n in enumerate(shapes)}
    pruned = set(pruned)
    kept = [n for n in shapes if n not in pruned]
    out: dict[str, str | None] = {}
    for p in shapes:
        if p not in pruned:
            continue
        cands = [s for s in kept if shapes[s] == shapes[p]] if rule != "none" else []
        if not cands:
            out[p] = None
            continue
        if rule == "nearest":
            out[p] = min(cands, key=lambda s, p=p: (abs(depth[s] - depth[p]), -scores[s], depth[s]))
        else:
            out[p] = min(cands, key=lambda s, p=p: (-scores[s], abs(depth[s] - depth[p]), depth[s]))
    return out


# ---------------------------------------------------------------- knowledge checkpoint
def knowledge_init(
    products, weights, rank: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [O, rank], A [rank, I]) whose product is the best rank-``rank``
    approximation of the ``weights``-weighted mean of ``products`` (uniform if
    the weights sum to 0). Directions past the mean's rank: random A row, zero B column."""
    w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    w = w / w.sum()
    m = sum(wi * p.detach().double() for wi, p in zip(w, products))
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    o, i = m.shape
    b = torch.zeros(o, rank, dtype=torch.float64)
    a = torch.empty(rank, i)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    a = a.double()
    tol = float(s[0]) * max(o, i) * torch.finfo(torch.float32).eps if s.numel() else 0.0
    live = min(rank, int((s > tol).sum()))
    root = s[:live].sqrt()
    b[:, :live] = u[:, :live] * root
    a[:live] = root[:, None] * vh[:live]
    return b.float(), a.float()


def _share(target: PearLoRA, source: PearLoRA, index: int) -> None:
    target.lora_a = source.lora_a
    target.lora_b = source.lora_b
    target.rank = source.rank
    target.pear_source.fill_(index)


def apply_pear(
    model: nn.Module,
    data,
    *,
    prune: float = 0.5,
    share: str = "nearest",
    knowledge: str = "weighted",
    scores: dict[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """Score, prune and share the adapters of a (channel-pruned) PearLoRA model in place.

    Returns {"scores", "pruned", "map" {target: source or None}, "shared", "removed"}.
    A model Pear already changed is left alone (so a resumed run does not apply it twice)."""
    if not 0.0 <= prune < 1.0:
        raise ValueError(f"Pear's prune fraction must be in [0, 1), got {prune}")
    if knowledge not in KNOWLEDGE:
        raise ValueError(
            f"unknown Pear knowledge checkpoint {knowledge!r}; known: {', '.join(KNOWLEDGE)}"
        )
    if share not in SHARE_MAPS:
        raise ValueError(f"unknown Pear sharing map {share!r}; known: {', '.join(SHARE_MAPS)}")
    layers = _layers(model)
    if any(m.state != OWN for _, m in layers):
        return {"scores": {}, "pruned": [], "map": {}, "shared": 0, "removed": 0, "skipped": True}
    if scores is None:
        scores = adapter_scores(model, data)
    depth = {n: i for i, (n, _) in enumerate(layers)}
    by = dict(layers)
    n_prune = int(round(prune * len(layers)))
    pruned = sorted(by, key=lambda n: (scores[n], depth[n]))[:n_prune]
    mapping = sharing_map({n: _shape(m) for n, m in layers}, scores, pruned, share)
    # knowledge checkpoint first (it reads every pruned adapter's own product)
    targets: dict[str, list[str]] = {}
    for t, s in mapping.items():
        if s is not None:
            targets.setdefault(s, []).append(t)
    if knowledge == "weighted":
        for s, ts in targets.items():
            src = by[s]
            group = [s] + ts
            b, a = knowledge_init(
                [by[n].lora_b @ by[n].lora_a for n in group],
                [scores[n] for n in group],
                src.rank,
                generator=generator,
            )
            src.lora_b = nn.Parameter(b)
            src.lora_a = nn.Parameter(a)
    for t, s in mapping.items():
        if s is None:
            by[t].remove_adapter()
        else:
            _share(by[t], by[s], depth[s])
    return {
        "scores": scores,
        "pruned": pruned,
        "map": mapping,
        "shared": sum(s is not None for s in mapping.values()),
        "removed": sum(s is None for s in mapping.values()),
    }


# ---------------------------------------------------------------- restore / pack
def relink(model: nn.Module) -> None:
    """Rebuild the sharing (and removed adapters) recorded in the ``pear_source``
    buffers, e.g. after a checkpoint's state dict was loaded into a fresh model."""
    layers = _layers(model)
    for _n, m in layers:
        if m.state == REMOVED:
            m.remove_adapter()
    for _n, m in layers:
        if m.state >= 0:
            _share(m, layers[m.state][1], m.state)


def link_shared(model: nn.Module, mapping: dict[str, str]) -> None:
    """Make each target use its source's factors (a bundle's ``shared_adapters``).
    Refuses unknown layers, chains, sources without factors and different kept shapes."""
    layers = _layers(model)
    index = {n: i for i, (n, _) in enumerate(layers)}
    if not isinstance(mapping, dict):
        raise ValueError("shared_adapters must be a JSON object {target conv: source conv}")
    for t, s in mapping.items():
        if t not in index or s not in index:
            raise ValueError(
                f"shared_adapters entry {t!r}: {s!r} names a layer that is not an adapted conv"
            )
        if s in mapping or layers[index[s]][1].state != OWN:
            raise ValueError(
                f"shared_adapters entry {t!r}: {s!r}: the source has no factors of its own"
            )
        tgt, src = layers[index[t]][1], layers[index[s]][1]
        if _shape(tgt) != _shape(src):
            raise ValueError(
                f"shared_adapters entry {t!r}: {s!r}: kept shapes {_shape(tgt)} and {_shape(src)} "
                "differ"
            )
    for t, s in mapping.items():
        _share(layers[index[t]][1], layers[index[s]][1], index[s])


def shared_map(model: nn.Module) -> dict[str, str]:
    """{target: source} of a Pear model (empty for other models)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, AdaptedLayer)]
    return {n: layers[m.state][0] for n, m in layers if isinstance(m, PearLoRA) and m.state >= 0}


def bundle_metadata(model: nn.Module) -> dict[str, str]:
    """Task-bundle metadata for Pear's sharing ({} when nothing is shared)."""
    m = shared_map(model)
    return {"shared_adapters": json.dumps(m)} if m else {}


def counts(model: nn.Module) -> dict[str, int]:
    """What Pear did to the model's adapters, read from its layers (the same
    after a resume): pruned, shared with a kept one, removed."""
    states = [m.state for _, m in _layers(model)]
    return {
        "pear_pruned": sum(s != OWN for s in states),
        "pear_shared": sum(s >= 0 for s in states),
        "pear_removed": sum(s == REMOVED for s in states),
    }


def _after_pruning(model: nn.Module, opts: PearOptions, data) -> dict[str, int]:
    apply_pear(
        model, data, prune=opts.pear_prune, share=opts.pear_share, knowledge=opts.pear_knowledge
    )
    return counts(model)


def _load_metadata(model: nn.Module, meta: dict[str, str], where: str) -> None:
    if "shared_adapters" not in meta:
        return
    shared = json_field(meta, "shared_adapters", where)
    try:
        link_shared(model, shared)
    except (ValueError, TypeError) as e:
        raise BundleError(f"{where}: field 'shared_adapters': {e}") from None


register(
    Method(
        "pear",
        lambda conv, rank: PearLoRA(conv, rank=rank),
        label="Pear r{rank}",
        options=PearOptions,
        after_pruning=_after_pruning,
        restore=relink,
        bundle_metadata=bundle_metadata,
        load_metadata=_load_metadata,
        summary="SPLoRA, then the least important adapters are pruned and shared",
    )
)

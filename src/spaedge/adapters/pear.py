"""Pear (Zhong & Zhou, arXiv 2409.19733): prune whole adapters, share the important ones.

What the paper says, as far as this project could check it (its abstract; the
method section and the authors' code, github.com/yibozhong/pear, could not be
read here): Pear prunes some adapters and shares the more important unpruned
ones with the positions whose adapters were pruned, so those positions keep
adapting; a "knowledge checkpoint" preserves what the pruned adapters had
learned. The paper's exact importance measure and its knowledge checkpoint are
therefore NOT reproduced here: the score and the re-initialisation below are
this project's own choices, named as such.

A Pear task starts as SPLoRA (``PearLoRA`` is SPLoRA plus a record of what Pear
did to the layer). Once channel pruning is over and the kept channels are final,
``apply_pear`` runs three steps, then the final epochs train the result:

1. **Score** every adapter as a whole by this project's first-order Taylor
   importance::

       s_l = | sum_{theta in A_l, B_l} theta * dL/dtheta |

   with dL/dtheta the gradient of the mean cross-entropy over a few fixed task
   batches (gradients accumulated over the batches before the product is
   taken; the model in eval mode so BatchNorm statistics are not touched). It
   is the first-order estimate of the loss change when the adapter's factors
   are set to zero. (For A, B of one product it equals 2 |<dL/dDelta, B A>|.)

2. **Prune** the ``prune`` fraction of adapters with the lowest scores
   (``round(prune * n)`` of the n adapters; ties by depth).

3. **Share**: each pruned position takes a kept adapter of a conv with the
   same *base* channels (O, I), e.g. any 128->128 conv of a stage, whatever
   channels pruning kept in either (the update is pointwise, at the centre
   tap, so a 3x3 conv and a 1x1 downsampling conv of one (O, I) may share). A shared adapter lives in the
   base's channel coordinates, factors B [O, r] and A [r, I], one
   ``nn.Parameter`` pair trained jointly by every conv using it (the source
   included); each conv gathers its own kept rows and columns::

       update_l = B[out_index_l] @ A[:, in_index_l]     (at the centre tap)

   so convs whose kept channels differ share it (the runtime gathers the same
   way, docs/format.md, ``shared_adapters``). Maps (``SHARE_MAPS``):

   - ``nearest`` (default): the candidate nearest in depth (position in the
     graph's conv order); ties go to the higher score. Neighbouring layers see
     the most similar features, so the update learned for one is the most
     plausible stand-in for the other.
   - ``important``: the highest-scoring candidate (ties: nearest in depth).
   - ``none``: no sharing; pruned adapters are simply removed.

   A pruned position with no kept adapter of its base shape loses its adapter
   (the layer runs on its gathered base weight, its BatchNorm and bias stay
   per-task): on a ResNet, the stem, and a stage's first conv and its
   downsampling conv when neither is kept.

This project's re-initialisation of a shared adapter (``KNOWLEDGE``, option
``--pear-knowledge``; not the paper's knowledge checkpoint, see above; the base
weight is frozen and shared by every task on the device, so nothing can be
merged into it):

- ``weighted`` (default): the shared adapter of source s and the pruned
  positions T_s it now serves starts as the rank-r truncated SVD of the
  score-weighted mean, in base coordinates, of their learned updates:

      M[o, i] = sum_j s_j P_j[o, i] / sum_j s_j   over the j in {s} u T_s keeping (o, i)
      B, A = U_r sqrt(S_r), sqrt(S_r) V_r^T

  with P_j = B_j A_j placed at conv j's kept rows and columns (0 where no conv
  of the group keeps the entry). M minimises sum_j s_j ||X[kept_j] - P_j||_F^2
  over all X; when the group keeps the same channels its rank-r truncation
  also minimises it over rank-r X (Eckart-Young), otherwise it is an
  approximation. Singular directions past the rank of M get a random A row and
  a zero B column (LoRA-style: the product is unchanged, the direction stays
  trainable). The final epochs then fine-tune from there.
- ``source``: the source's own factors, placed at its kept rows and columns
  (other rows of B zero, other columns of A random, LoRA-style); the pruned
  adapters' updates are dropped (an ablation).

Rows of B and columns of A that no conv of a group keeps are zero, never
gathered and not learned (``masked_entries``), but stored: the bundle keeps
the base's coordinates. What a removed adapter (no source) learned is lost
either way.

State lives in a buffer per layer, ``pear_source``: -1 own adapter, -2 removed,
k >= 0 uses the shared adapter held by the k-th adapted layer (conv order; the
group's first conv in depth holds it, its own index). Checkpoints carry it,
and ``relink`` rebuilds the parameter sharing of a model restored from a state
dict. Bundles store each shared adapter once, as ``shared.<adapter>.a`` /
``.b``, and list every conv using it in the ``shared_adapters`` metadata
(``bundle_tensors``, ``bundle_metadata``, ``load_tensors``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.base import AdaptedLayer, centre_tap, layers_of
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
    "PREFIX",
    "adapter_scores",
    "sharing_map",
    "knowledge_init",
    "apply_pear",
    "relink",
    "shared_map",
    "shared_adapters",
    "bundle_metadata",
    "bundle_tensors",
    "load_tensors",
    "counts",
]

SHARE_MAPS = ("nearest", "important", "none")
KNOWLEDGE = ("weighted", "source")
OWN, REMOVED = -1, -2
#: model-level tensors of a shared adapter S: shared.S.a [r, I], shared.S.b [O, r]
PREFIX = "shared."
META = "shared_adapters"


@dataclass(frozen=True)
class PearOptions(RankOptions):
    pear_prune: float = flag(
        0.5, "fraction of adapters pruned after channel pruning (default {default})", parse=float
    )
    pear_share: str = flag(
        "nearest",
        "a pruned position shares the kept adapter of a conv of its base shape nearest in depth "
        "(default), the most important one, or none (adapter removed)",
        choices=SHARE_MAPS,
    )
    pear_knowledge: str = flag(
        "weighted",
        "this project's start of a shared adapter (not the paper's knowledge checkpoint): the "
        "rank-r fit of every update it replaces, weighted by importance (default), or the "
        "source's own factors (source)",
        choices=KNOWLEDGE,
    )


class PearLoRA(SPLoRA):
    """SPLoRA whose adapter Pear may remove or replace by a shared one.

    A shared adapter's factors are in the base's channel coordinates
    (``lora_b`` [O, r], ``lora_a`` [r, I]) and the layer gathers its kept rows
    and columns; an own adapter's are the layer's kept ones, as in SPLoRA."""

    method = "pear"

    def __init__(self, base, rank: int = 8):
        super().__init__(base, rank=rank)
        self.register_buffer("pear_source", torch.tensor(OWN, dtype=torch.long))
        self._unused = 0  # entries of a held shared adapter no conv gathers

    @property
    def state(self) -> int:
        return int(self.pear_source)

    @property
    def shared(self) -> bool:
        return self.state >= 0

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B [O', r], A [r, I']) this layer applies: its own, or gathered from a shared adapter."""
        if self.shared:
            return (
                self.lora_b.index_select(0, self.out_index),
                self.lora_a.index_select(1, self.in_index),
            )
        return self.lora_b, self.lora_a

    def delta(self):
        if self.state == REMOVED:
            return None
        b, a = self.factors()
        return centre_tap(self.weight, b @ a)

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
        self._unused = 0

    def use_shared(self, b: nn.Parameter, a: nn.Parameter, holder: int) -> None:
        """Use the shared adapter (B [O, r], A [r, I] in base coordinates) held by layer ``holder``."""
        if tuple(b.shape[:1]) + tuple(a.shape[1:]) != (
            self.base_out_channels,
            self.base_in_channels,
        ):
            raise ValueError(
                f"a shared adapter of {b.shape[0]}x{a.shape[1]} base channels does not fit a "
                f"conv of {self.base_out_channels}x{self.base_in_channels}"
            )
        if b.shape[1] != a.shape[0] or a.shape[0] < 1:
            raise ValueError(f"shared factors of ranks {b.shape[1]} and {a.shape[0]} differ")
        self.lora_b, self.lora_a = b, a
        self.rank = int(a.shape[0])
        self.pear_source.fill_(holder)
        self._unused = 0

    def masked_entries(self) -> int:
        return self._unused

    def bundle_tensors(self):
        t = AdaptedLayer.bundle_tensors(self)
        if self.state == OWN:  # a shared adapter is the model's (bundle_tensors below)
            t["lora_a"] = self.lora_a.detach()
            t["lora_b"] = self.lora_b.detach()
        return t

    def load_bundle_tensors(self, t):
        if "lora_a" in t:
            super().load_bundle_tensors(t)
            self.pear_source.fill_(OWN)
        else:  # removed, or shared: load_tensors attaches its shared adapter afterwards
            AdaptedLayer.load_bundle_tensors(self, t)
            self.remove_adapter()

    def extra_repr(self) -> str:
        s = {OWN: "own adapter", REMOVED: "adapter removed"}.get(
            self.state, f"uses shared adapter #{self.state}"
        )
        return f"{super().extra_repr()}, {s}"


def _layers(model: nn.Module) -> list[tuple[str, PearLoRA]]:
    return layers_of(model, PearLoRA, "Pear needs PearLoRA layers (adapt with method 'pear')")


def _base_shape(m: AdaptedLayer) -> tuple[int, int]:
    """What a shared adapter must fit: the base conv's (O, I) channels (the update
    is pointwise, at the centre tap, so a 3x3 and a 1x1 conv can share one)."""
    return m.base_out_channels, m.base_in_channels


# ---------------------------------------------------------------- 1. scores
def adapter_scores(model: nn.Module, data) -> dict[str, float]:
    """This project's first-order Taylor importance of each adapter with its own
    factors: |sum over its parameters of param * dL/dparam|, L the mean loss over ``data``."""
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
    shapes: dict[str, tuple[int, ...]], scores: dict[str, float], pruned, rule: str = "nearest"
) -> dict[str, str | None]:
    """Source (or None: adapter removed) for each pruned position.

    ``shapes`` is in depth order (the graph's conv order) and gives each
    position's shape class (Pear passes the base conv's (O, I));
    candidates are kept positions of the same class."""
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


# ---------------------------------------------------------------- re-initialisation
def _kaiming_rows(rank: int, cols: int, generator) -> torch.Tensor:
    a = torch.empty(rank, cols)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    return a.double()


def knowledge_init(
    products,
    weights,
    rank: int,
    generator: torch.Generator | None = None,
    *,
    supports=None,
    shape: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B [O, rank], A [rank, I]): the rank-``rank`` truncated SVD of the
    ``weights``-weighted mean of ``products`` (uniform where the weights sum to 0).

    Without ``supports`` every product is [O, I]. With ``supports`` (a
    (rows, cols) index pair per product) and ``shape`` (O, I), product j is
    placed at rows x cols of an [O, I] matrix and the mean of each entry is over
    the products keeping it (0 where none does); rows and columns no product
    keeps are 0 in B and A. Directions past the mean's rank: random A row, zero
    B column."""
    w = [float(v) for v in weights]
    if supports is None:
        o, i = products[0].shape
        supports = [(torch.arange(o), torch.arange(i))] * len(products)
    else:
        o, i = shape
    num = torch.zeros(o, i, dtype=torch.float64)
    den = torch.zeros(o, i, dtype=torch.float64)
    plain = torch.zeros(o, i, dtype=torch.float64)
    cnt = torch.zeros(o, i, dtype=torch.float64)
    rows_used = torch.zeros(o, dtype=torch.bool)
    cols_used = torch.zeros(i, dtype=torch.bool)
    for p, wj, (r, c) in zip(products, w, supports):
        r, c = torch.as_tensor(r, dtype=torch.long), torch.as_tensor(c, dtype=torch.long)
        ix = (r[:, None], c[None, :])
        pd = p.detach().double()
        num[ix] += wj * pd
        den[ix] += wj
        plain[ix] += pd
        cnt[ix] += 1
        rows_used[r] = True
        cols_used[c] = True
    weighted = den > 0
    m = torch.where(weighted, num / den.clamp_min(1e-300), plain / cnt.clamp_min(1))
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    b = torch.zeros(o, rank, dtype=torch.float64)
    a = _kaiming_rows(rank, i, generator)
    tol = float(s[0]) * max(o, i) * torch.finfo(torch.float32).eps if s.numel() else 0.0
    live = min(rank, int((s > tol).sum()))
    root = s[:live].sqrt()
    b[:, :live] = u[:, :live] * root
    a[:live] = root[:, None] * vh[:live]
    b[~rows_used] = 0
    a[:, ~cols_used] = 0
    return b.float(), a.float()


def _source_init(
    src: PearLoRA, members: list[PearLoRA], generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's own factors in base coordinates; other kept columns of A random, rows of B 0."""
    o, i = src.base_out_channels, src.base_in_channels
    rows_used = torch.zeros(o, dtype=torch.bool)
    cols_used = torch.zeros(i, dtype=torch.bool)
    for m in members:
        rows_used[m.out_index] = True
        cols_used[m.in_index] = True
    b = torch.zeros(o, src.rank)
    a = _kaiming_rows(src.rank, i, generator).float()
    a[:, ~cols_used] = 0
    b[src.out_index] = src.lora_b.detach()
    a[:, src.in_index] = src.lora_a.detach()
    return b, a


def _unused_entries(members: list[PearLoRA]) -> int:
    """Entries of the group's base-coordinate factors that no member gathers."""
    h = members[0]
    rows = torch.unique(torch.cat([m.out_index for m in members])).numel()
    cols = torch.unique(torch.cat([m.in_index for m in members])).numel()
    return h.rank * ((h.base_out_channels - rows) + (h.base_in_channels - cols))


def _tie(layers: list[tuple[str, PearLoRA]], members: list[int], b, a) -> None:
    """Make layers ``members`` (indices, conv order) use one shared adapter, held by the first."""
    members = sorted(members)
    holder = members[0]
    b = b if isinstance(b, nn.Parameter) else nn.Parameter(b)
    a = a if isinstance(a, nn.Parameter) else nn.Parameter(a)
    for k in members:
        layers[k][1].use_shared(b, a, holder)
    layers[holder][1]._unused = _unused_entries([layers[k][1] for k in members])


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
            f"unknown start of a shared Pear adapter (--pear-knowledge) {knowledge!r}; known: {', '.join(KNOWLEDGE)}"
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
    mapping = sharing_map({n: _base_shape(m) for n, m in layers}, scores, pruned, share)
    groups: dict[str, list[str]] = {}
    for t, s in mapping.items():
        if s is not None:
            groups.setdefault(s, [s]).append(t)
    # every factor is read before any layer changes
    inits = {}
    for s, group in groups.items():
        src, members = by[s], [by[n] for n in group]
        if knowledge == "weighted":
            inits[s] = knowledge_init(
                [by[n].lora_b @ by[n].lora_a for n in group],
                [scores[n] for n in group],
                src.rank,
                generator=generator,
                supports=[(by[n].out_index, by[n].in_index) for n in group],
                shape=(src.base_out_channels, src.base_in_channels),
            )
        else:
            inits[s] = _source_init(src, members, generator)
    for t, s in mapping.items():
        if s is None:
            by[t].remove_adapter()
    for s, group in groups.items():
        _tie(layers, [depth[n] for n in group], *inits[s])
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
    groups: dict[int, list[int]] = {}
    for k, (_n, m) in enumerate(layers):
        if m.state == REMOVED:
            m.remove_adapter()
        elif m.state >= 0:
            groups.setdefault(m.state, []).append(k)
    for h, members in groups.items():
        if h not in members:
            raise ValueError(
                f"Pear layer {layers[members[0]][0]} uses shared adapter #{h}, which "
                f"{layers[h][0] if h < len(layers) else 'no layer'} does not hold"
            )
        holder = layers[h][1]
        _tie(layers, members, holder.lora_b, holder.lora_a)


def shared_adapters(model: nn.Module) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
    """{adapter name (its holder conv): (B, A)} of a Pear model's shared adapters."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, AdaptedLayer)]
    return {
        n: (m.lora_b, m.lora_a)
        for k, (n, m) in enumerate(layers)
        if isinstance(m, PearLoRA) and m.state == k
    }


def shared_map(model: nn.Module) -> dict[str, str]:
    """{conv: shared adapter (its holder conv)} of a Pear model (empty for other models)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, AdaptedLayer)]
    return {n: layers[m.state][0] for n, m in layers if isinstance(m, PearLoRA) and m.state >= 0}


def bundle_metadata(model: nn.Module) -> dict[str, str]:
    """Task-bundle metadata for Pear's sharing ({} when nothing is shared)."""
    m = shared_map(model)
    return {META: json.dumps(m)} if m else {}


def bundle_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every shared adapter once: shared.<adapter>.a [r, I] and .b [O, r] (base coordinates)."""
    out = {}
    for name, (b, a) in shared_adapters(model).items():
        out[f"{PREFIX}{name}.a"] = a.detach()
        out[f"{PREFIX}{name}.b"] = b.detach()
    return out


def load_tensors(
    model: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str
) -> None:
    """Attach the bundle's shared adapters (after every layer's ``load_bundle_tensors``):
    each one Parameter pair, gathered by every conv its ``shared_adapters`` entries name."""
    layers = _layers(model)
    index = {n: k for k, (n, _) in enumerate(layers)}
    conv_set = json_field(meta, META, where) if META in meta else {}
    if not isinstance(conv_set, dict) or not all(isinstance(v, str) for v in conv_set.values()):
        raise BundleError(f"{where}: field '{META}' must be a JSON object {{conv: shared adapter}}")
    groups: dict[str, list[int]] = {}
    for n, s in conv_set.items():
        if n not in index:
            raise BundleError(f"{where}: field '{META}': entry {n!r} names no adapted conv")
        if layers[index[n]][1].state == OWN:
            raise BundleError(
                f"{where}: field '{META}': entry {n!r}: the conv has its own lora_a/lora_b; "
                "a shared adapter replaces them"
            )
        groups.setdefault(s, []).append(index[n])
    for s, members in groups.items():
        try:
            a, b = tensors[f"{PREFIX}{s}.a"], tensors[f"{PREFIX}{s}.b"]
        except KeyError as e:
            raise BundleError(
                f"{where}: tensor '{e.args[0]}' is missing (shared adapter {s!r})"
            ) from None
        try:
            _tie(layers, members, nn.Parameter(b.clone()), nn.Parameter(a.clone()))
        except ValueError as e:
            raise BundleError(f"{where}: field '{META}': shared adapter {s!r}: {e}") from None
    unused = sorted(
        k
        for k in tensors
        if k.startswith(PREFIX) and k[len(PREFIX) :].rpartition(".")[0] not in groups
    )
    if unused:
        raise BundleError(f"{where}: tensor '{unused[0]}': no conv uses this shared adapter")


def counts(model: nn.Module) -> dict[str, int]:
    """What Pear did to the model's adapters, read from its layers (the same
    after a resume): pruned, shared with a kept one, removed. Each shared
    adapter serves its source and one or more pruned positions."""
    states = [m.state for _, m in _layers(model)]
    members = sum(s >= 0 for s in states)
    adapters = len({s for s in states if s >= 0})
    removed = sum(s == REMOVED for s in states)
    return {
        "pear_pruned": members - adapters + removed,
        "pear_shared": members - adapters,
        "pear_removed": removed,
    }


def _after_pruning(model: nn.Module, opts: PearOptions, data) -> dict[str, int]:
    apply_pear(
        model, data, prune=opts.pear_prune, share=opts.pear_share, knowledge=opts.pear_knowledge
    )
    return counts(model)


register(
    Method(
        "pear",
        lambda conv, rank: PearLoRA(conv, rank=rank),
        label="Pear r{rank}",
        options=PearOptions,
        after_pruning=_after_pruning,
        restore=relink,
        bundle_metadata=bundle_metadata,
        bundle_tensors=bundle_tensors,
        load_tensors=load_tensors,
        summary="SPLoRA, then the least important adapters are pruned and share kept ones",
    )
)

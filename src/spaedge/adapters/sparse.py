"""SparseAdapter (He et al. 2022) in the SPA setting: an adapter a method
already has, made sparse at initialisation, and its masks.

The paper prunes an adapter's weights once, at initialisation, with a
pruning-at-initialisation criterion and one global threshold; the masks stay
fixed and training updates only the kept entries. It works up to 80%
sparsity and recommends 40%. Its *Large-Sparse* setting makes the adapter
wider and sparsifies it so that it keeps the dense adapter's parameter count.

Methods (``spaedge.adapters.registry``), options ``sparsity`` (fraction of the
adapter's entries masked, default 0.4) and ``mask_criterion``:

- ``sparse``: sparse SPLoRA. Both factors A (r x I) and B (O x r) are masked.
- ``sparse-sppara``: sparse SPPaRA, the pointwise adapter P (O x I) masked.
- ``sparse-large``: Large-Sparse SPLoRA. The rank is enlarged from the
  configured r to ``r' = ceil(r / (1 - sparsity))`` and the masks keep exactly
  ``r * sum over convs of (O + I)`` entries, the dense rank-r SPLoRA's
  parameter count (``large_rank``, ``dense_lora_parameters``). The realised
  sparsity ``1 - r / r'`` is the configured one or, where r / (1 - sparsity)
  is not a whole number, a little above it (r 8 at 40%: r' 14, 42.9%).

A mask is a 0/1 buffer beside its parameter that the forward multiplies in,
so a masked entry gets no gradient; masked entries are also zeroed in the
parameter when the mask is set, so they stay exactly zero through training
(Adam's update of a zero gradient is zero, decoupled weight decay of a zero
is zero). Bundles store the kept entries only, as F32 values + a U8 bitmask
of their flat positions, one bit per entry (docs/format.md: 4 bytes and a bit
per kept entry, so a sparser adapter is a smaller bundle than the dense one);
``learned_parameters`` counts them.

``sparsify(model, criterion, keep, data)`` scores every entry of every masked
tensor of the model and keeps the globally top ``keep`` fraction (or exactly
``nonzeros`` entries): one threshold over all layers and, for SPLoRA, over
both factors.

Scores (higher = keep):
- ``snip``: |g * w| (Lee et al. 2019), g = dL/dw on task batches.
- ``magnitude``: |w|.
- ``random``: uniform random (seeded by the torch RNG).
- ``grasp``: w * (H g) (Wang et al. 2020: GraSP removes the entries whose removal
  reduces gradient flow least, i.e. the highest -w*Hg; we keep the highest w*Hg).
  H g by double back-propagation.
- ``synflow``: |w * dR/dw| with R = sum of the logits of the network with every
  weight replaced by its absolute value on an all-ones input (Tanaka et al.
  2020), iterated over ``rounds`` rounds with an exponential keep schedule, data
  free. BatchNorm runs as the positive scale |gamma|/sqrt(var+eps) (mean and beta
  set to 0) so the "linearised" network is positive throughout.

Every criterion needs nonzero weights (SNIP's |g * w| of a zero is zero), and
SPLoRA's own initialisation has B = 0, which would also zero A's gradient. A
sparse SPLoRA therefore starts *balanced*: A and B both ~ N(0, s^2) with
s^2 = init_std * std(W) / sqrt(r), so B A starts at about init_std times the
base weights' scale (the same start as the sparse SPPaRA's P) and both factors
are on one scale, which a single threshold over both needs (with A at SPLoRA's
Kaiming scale, magnitude would keep A and drop nearly all of B).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spaedge.adapters.base import AdaptedLayer, centre_tap
from spaedge.adapters.registry import Method, register
from spaedge.adapters.splora import SPLoRA
from spaedge.runtime import LIMITS

__all__ = [
    "SparseAdapter",
    "SparseSPLoRA",
    "MASK_CRITERIA",
    "sparsify",
    "large_rank",
    "dense_lora_parameters",
    "pack_mask",
    "unpack_mask",
    "SparseTensorError",
]

MASK_CRITERIA = ("snip", "magnitude", "random", "grasp", "synflow")


class _Masked:
    """Mixin of an adapted layer whose trainable tensors are multiplied by fixed
    0/1 masks: ``masked`` names each (parameter, mask buffer) pair."""

    masked: tuple[tuple[str, str], ...] = ()

    def mask_pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return [(getattr(self, p), getattr(self, m)) for p, m in self.masked]

    def nonzeros(self) -> int:
        """Entries the masks keep (what is learned and stored)."""
        return sum(int(m.sum()) for _, m in self.mask_pairs())

    def masked_entries(self) -> int:
        return sum(p.numel() for p, _ in self.mask_pairs()) - self.nonzeros()

    def _sparse_tensors(
        self, name: str, value: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        keep = mask.reshape(-1) != 0
        return {
            f"{name}_values": value.detach().reshape(-1)[keep].float().contiguous(),
            f"{name}_mask": pack_mask(keep),
        }


class SparseTensorError(ValueError):
    """A layer's sparse tensors break a format rule. ``template`` names the layer's
    tensors as ``{0}``, ``{1}``... (``names``, layer-local), so the bundle reader can
    say which conv's tensors they are (``message(prefix)``)."""

    def __init__(self, template: str, *names: str):
        self.template, self.names = template, names
        super().__init__(self.message())

    def message(self, prefix: str = "") -> str:
        return self.template.format(*(f"'{prefix}{n}'" for n in self.names))


_DTYPE_NAMES = {torch.float32: "F32", torch.int32: "I32", torch.uint8: "U8"}


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """U8 bitmask of a flat bool tensor: bit i (byte i // 8, bit i % 8, least
    significant first) set iff ``keep[i]``; padding bits zero (docs/format.md)."""
    keep = keep.reshape(-1).bool()
    bits = torch.zeros(-(-keep.numel() // 8) * 8, dtype=torch.uint8)
    bits[: keep.numel()] = keep.to(torch.uint8)
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8)
    return (bits.reshape(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_mask(mask: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat bool tensor of ``numel`` entries that :func:`pack_mask` packed (unchecked)."""
    bits = (mask.reshape(-1, 1).to(torch.int32) >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:numel].bool()


def _sparse_positions(
    t: dict[str, torch.Tensor], name: str, numel: int, shape: str, required: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(flat positions, values) of the sparse tensor ``name`` (``name_values`` at the set
    bits of ``name_mask``) of ``numel`` entries, checked as the C++ runtime checks
    them; None when neither is present and not ``required``."""
    vn, mn = f"{name}_values", f"{name}_mask"
    if vn not in t and mn not in t and not required:
        return None
    if vn not in t:
        raise SparseTensorError("missing tensor {0} (present iff {1} is)", vn, mn)
    if mn not in t:
        raise SparseTensorError("missing tensor {0} (present iff {1} is)", mn, vn)
    values, mask = t[vn], t[mn]
    for n, x, want in ((vn, values, torch.float32), (mn, mask, torch.uint8)):
        if x.dtype != want:
            raise SparseTensorError(
                f"tensor {{0}}: dtype is {_DTYPE_NAMES.get(x.dtype, x.dtype)}, expected "
                f"{_DTYPE_NAMES[want]}",
                n,
            )
    if values.dim() != 1:
        raise SparseTensorError(f"tensor {{0}}: shape {list(values.shape)}, expected [nnz]", vn)
    nbytes = -(-numel // 8)
    if list(mask.shape) != [nbytes]:
        raise SparseTensorError(
            f"tensor {{0}}: shape {list(mask.shape)}, expected [{nbytes}] (one bit per entry of "
            f"the {shape}, {numel} entries, in bytes rounded up)",
            mn,
        )
    bits = unpack_mask(mask, 8 * nbytes)
    if bits[numel:].any():
        raise SparseTensorError(
            f"tensor {{0}}: padding bits after position {numel - 1} are set (last byte "
            f"{int(mask[-1])}): they must be zero",
            mn,
        )
    keep = bits[:numel]
    if int(keep.sum()) != values.numel():
        raise SparseTensorError(
            f"tensor {{0}}: has {int(keep.sum())} set bits but {{1}} has {values.numel()} values "
            "(one value per set bit)",
            mn,
            vn,
        )
    return keep.nonzero().reshape(-1), values


def _scatter(shape, index: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense tensor, 0/1 mask) of ``shape`` with ``values`` at flat positions ``index``."""
    dense, mask = torch.zeros(shape), torch.zeros(shape)
    idx = index.long().reshape(-1)
    dense.view(-1)[idx] = values.float().reshape(-1)
    mask.view(-1)[idx] = 1.0
    return dense, mask


class SparseAdapter(_Masked, AdaptedLayer):
    """Sparse SPPaRA: a pointwise update P (O x I at the centre tap) with a fixed
    unstructured mask. ``full_kernel``: the update spans the whole kernel
    (O x I x k x k); only a bundle whose entries are not all at the centre tap
    loads as one (the former full-kernel method wrote such bundles)."""

    method = "sparse-sppara"
    masked = (("sparse", "mask"),)

    def __init__(self, base, rank: int = 0, full_kernel: bool = False, init_std: float = 1e-2):
        super().__init__(base)
        self.full_kernel = full_kernel
        shape = (
            tuple(self.weight.shape)
            if full_kernel
            else (self.base_out_channels, self.base_in_channels)
        )
        # Nonzero random init (as the adapters of the SparseAdapter paper), scaled to the
        # base weights so the task starts close to the base; saliency needs w != 0.
        scale = (
            float(self.weight.detach().std()) * init_std if self.weight.numel() > 1 else init_std
        )
        self.sparse = nn.Parameter(torch.randn(shape) * scale)
        self.register_buffer("mask", torch.ones(shape))

    def update(self) -> torch.Tensor:
        return self.sparse * self.mask

    def delta(self) -> torch.Tensor:
        u = self.update()
        return u if self.full_kernel or not self.is_conv else centre_tap(self.weight, u)

    def keep_out(self, keep):
        super().keep_out(keep)
        self.sparse = nn.Parameter(self.sparse.data[keep].clone())
        self.mask = self.mask[keep].clone()

    def keep_in(self, keep):
        super().keep_in(keep)
        self.sparse = nn.Parameter(self.sparse.data[:, keep].clone())
        self.mask = self.mask[:, keep].clone()

    def bundle_tensors(self):
        t = super().bundle_tensors()
        d = self.delta().detach()
        m = self.mask.bool()
        if not self.full_kernel and self.is_conv:
            m = centre_tap(self.weight, m.float()).bool()
        t.update(self._sparse_tensors("sparse_delta", d, m))
        if not t[
            "sparse_delta_values"
        ].numel():  # optional in the format: nothing kept, nothing stored
            del t["sparse_delta_values"], t["sparse_delta_mask"]
        return t

    def load_bundle_tensors(self, t):
        AdaptedLayer.load_bundle_tensors(self, t)
        shape = tuple(self.weight.shape)
        dims = ", ".join(str(d) for d in shape)
        stored = _sparse_positions(
            t, "sparse_delta", math.prod(shape), f"[{dims}] task weight", False
        )
        idx, values = (
            stored if stored is not None else (torch.zeros(0, dtype=torch.long), torch.zeros(0))
        )
        kk = shape[2] * shape[3] if self.is_conv else 1
        centre = (shape[2] // 2) * shape[3] + shape[3] // 2 if self.is_conv else 0
        # The pointwise form when every entry is at the centre tap (what sparse-sppara writes).
        self.full_kernel = self.full_kernel or bool((idx % kk != centre).any())
        if self.full_kernel or not self.is_conv:
            dense, mask = _scatter(shape, idx, values)
        else:
            dense, mask = _scatter(shape[:2], idx // kk, values)
        self.sparse = nn.Parameter(dense)
        self.mask = mask


class SparseSPLoRA(_Masked, SPLoRA):
    """Sparse SPLoRA: ``W + centre_tap((B * M_B) @ (A * M_A))`` with fixed masks
    M_A, M_B; factors initialised balanced (module docstring)."""

    method = "sparse"
    masked = (("lora_a", "lora_a_mask"), ("lora_b", "lora_b_mask"))

    def __init__(self, base: nn.Conv2d | nn.Linear, rank: int = 8, init_std: float = 1e-2):
        AdaptedLayer.__init__(self, base)
        if rank < 1:
            raise ValueError(f"adapter rank must be at least 1, got {rank}")
        self.init_std = init_std
        self.register_buffer("lora_a_mask", torch.ones(0))
        self.register_buffer("lora_b_mask", torch.ones(0))
        self.widen(rank)

    def widen(self, rank: int) -> None:
        """New factors of rank ``rank`` (balanced random), masks all ones: Large-Sparse
        widens before its masks are chosen."""
        if rank < 1:
            raise ValueError(f"adapter rank must be at least 1, got {rank}")
        w = self.weight.detach()
        scale = float(w.std()) * self.init_std if w.numel() > 1 else self.init_std
        s = math.sqrt(scale / math.sqrt(rank))
        self.rank = rank
        self.lora_a = nn.Parameter(torch.randn(rank, self.in_channels) * s)
        self.lora_b = nn.Parameter(torch.randn(self.out_channels, rank) * s)
        self.lora_a_mask = torch.ones(rank, self.in_channels)
        self.lora_b_mask = torch.ones(self.out_channels, rank)

    def delta(self) -> torch.Tensor:
        return centre_tap(
            self.weight, (self.lora_b * self.lora_b_mask) @ (self.lora_a * self.lora_a_mask)
        )

    def keep_out(self, keep: torch.Tensor) -> None:
        super().keep_out(keep)
        self.lora_b_mask = self.lora_b_mask[keep].clone()

    def keep_in(self, keep: torch.Tensor) -> None:
        super().keep_in(keep)
        self.lora_a_mask = self.lora_a_mask[:, keep].clone()

    def bundle_tensors(self) -> dict[str, torch.Tensor]:
        t = AdaptedLayer.bundle_tensors(self)
        t["lora_rank"] = torch.tensor([self.lora_a.shape[0]], dtype=torch.int32)
        t.update(self._sparse_tensors("lora_a", self.lora_a * self.lora_a_mask, self.lora_a_mask))
        t.update(self._sparse_tensors("lora_b", self.lora_b * self.lora_b_mask, self.lora_b_mask))
        return t

    def load_bundle_tensors(self, t: dict[str, torch.Tensor]) -> None:
        AdaptedLayer.load_bundle_tensors(self, t)
        r = int(t["lora_rank"].reshape(-1)[0])
        if not 1 <= r <= LIMITS["max_rank"]:
            raise SparseTensorError(
                f"tensor {{0}}: rank {r} must be in [1, {LIMITS['max_rank']}]", "lora_rank"
            )
        O, I = self.out_channels, self.in_channels
        a, ma = _scatter(
            (r, I), *_sparse_positions(t, "lora_a", r * I, f"[{r}, {I}] factor A", True)
        )
        b, mb = _scatter(
            (O, r), *_sparse_positions(t, "lora_b", O * r, f"[{O}, {r}] factor B", True)
        )
        self.rank = r
        self.lora_a, self.lora_b = nn.Parameter(a), nn.Parameter(b)
        self.lora_a_mask, self.lora_b_mask = ma, mb


def _layers(model):
    return [m for m in model.modules() if isinstance(m, _Masked)]


def _masked(model) -> list[tuple[nn.Module, str, str]]:
    """Every (layer, parameter name, mask name) of the model, in module order."""
    return [(m, p, k) for m in _layers(model) for p, k in m.masked]


def _loss(model, data):
    total = 0.0
    for x, y in data:
        total = total + F.cross_entropy(model(x), y) * len(y)
    return total / sum(len(y) for _, y in data)


def _scores(model, criterion, data):
    params = [getattr(m, p) for m, p, _ in _masked(model)]
    if criterion == "magnitude":
        return [p.detach().abs() for p in params]
    if criterion == "random":
        return [torch.rand(p.shape) for p in params]
    if not data:
        raise ValueError(f"mask criterion {criterion!r} needs task data")
    with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
        if criterion == "snip":
            g = torch.autograd.grad(_loss(model, data), params)
            return [(gi * p).detach().abs() for gi, p in zip(g, params)]
        if criterion == "grasp":
            g = torch.autograd.grad(_loss(model, data), params, create_graph=True)
            z = sum((gi * gi.detach()).sum() for gi in g)
            hg = torch.autograd.grad(z, params)
            return [(p * h).detach() for p, h in zip(params, hg)]
    raise ValueError(f"unknown mask criterion {criterion!r}; known: {', '.join(MASK_CRITERIA)}")


def _apply_threshold(entries, scores, k: int) -> None:
    """Masks keeping exactly the ``k`` top-scored entries over all ``entries``."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    if k >= flat.numel():
        for m, p, name in entries:
            setattr(m, name, torch.ones_like(getattr(m, p)))
        return
    thr = torch.topk(flat, k).values[-1]
    budget = k
    masks = []
    for s in scores:
        mask = (s > thr).float()
        masks.append(mask)
        budget -= int(mask.sum())
    # ties at the threshold: fill the remaining budget in layer order
    for mask, s in zip(masks, scores):
        if budget <= 0:
            break
        tie = ((s == thr) & (mask == 0)).reshape(-1).nonzero().reshape(-1)[:budget]
        mask.view(-1)[tie] = 1.0
        budget -= tie.numel()
    for (m, _, name), mask in zip(entries, masks):
        setattr(m, name, mask)


def _synflow(model, k: int, total: int, rounds: int) -> None:
    entries = _masked(model)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_saved = [(b.running_mean.clone(), b.running_var.clone()) for b in bns]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
            for b in bns:
                b.running_mean.zero_()
                b.bias.zero_()
        x = torch.ones(1, *model.input_shape) if hasattr(model, "input_shape") else None
        for r in range(1, rounds + 1):
            count = k if r == rounds else max(k, int(round(total * (k / total) ** (r / rounds))))
            params = [getattr(m, p) for m, p, _ in entries]
            with torch.enable_grad(), torch.backends.mkldnn.flags(enabled=False):
                out = model(x)
                g = torch.autograd.grad(out.sum(), params)
            scores = [
                (gi * p * getattr(m, name)).detach().abs()
                for gi, p, (m, _, name) in zip(g, params, entries)
            ]
            _apply_threshold(entries, scores, count)
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
            for b, (mu, var) in zip(bns, bn_saved):
                b.running_mean.copy_(mu)
                b.running_var.copy_(var)
        model.train(was_training)


def sparsify(
    model: nn.Module,
    criterion: str,
    keep: float | None = None,
    data=None,
    *,
    nonzeros: int | None = None,
    input_shape=None,
    rounds: int = 10,
) -> int:
    """Mask every masked tensor of ``model`` (SparseSPLoRA's factors, SparseAdapter's
    update) to the global top ``keep`` fraction of their entries by ``criterion``,
    or to exactly ``nonzeros`` entries; masked entries are zeroed. Returns the
    number of entries kept."""
    if criterion not in MASK_CRITERIA:
        raise ValueError(f"unknown mask criterion {criterion!r}; known: {', '.join(MASK_CRITERIA)}")
    entries = _masked(model)
    if not entries:
        raise ValueError(
            "the model has no SparseAdapter layers (adapt with method 'sparse', 'sparse-sppara' or "
            "'sparse-large')"
        )
    total = sum(getattr(m, p).numel() for m, p, _ in entries)
    if nonzeros is None:
        if keep is None or not 0.0 < keep <= 1.0:
            raise ValueError(f"adapter keep fraction must be in (0, 1], got {keep}")
        nonzeros = max(1, int(round(keep * total)))
    if not 1 <= nonzeros <= total:
        raise ValueError(
            f"nonzeros must be in [1, {total}] (the adapters' entries), got {nonzeros}"
        )
    was_training = model.training
    model.eval()
    try:
        if criterion == "synflow":
            if input_shape is None:
                raise ValueError("synflow needs input_shape (C, H, W)")
            model.input_shape = tuple(input_shape)
            try:
                _synflow(model, nonzeros, total, rounds)
            finally:
                del model.input_shape
        else:
            _apply_threshold(entries, _scores(model, criterion, data), nonzeros)
    finally:
        model.train(was_training)
    with torch.no_grad():
        for m, p, name in entries:
            getattr(m, p).mul_(getattr(m, name))
    return sum(m.nonzeros() for m in _layers(model))


def large_rank(rank: int, sparsity: float) -> int:
    """Large-Sparse's rank: ``ceil(rank / (1 - sparsity))``, the narrowest rank whose
    entries at ``sparsity`` hold at least rank ``rank``'s dense parameters."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return math.ceil(round(rank / (1.0 - sparsity), 9))  # 8 / (1 - 0.8) is 40.00000000000001


def dense_lora_parameters(model: nn.Module, rank: int) -> int:
    """Parameters of dense rank-``rank`` factors on ``model``'s (sparse) SPLoRA layers,
    ``rank * sum(O + I)``: what Large-Sparse keeps."""
    return sum(
        rank * (m.out_channels + m.in_channels) for m in model.modules() if isinstance(m, SPLoRA)
    )


def _prepare(model: nn.Module, opts, data, input_size) -> None:
    """Sparsify at initialisation: ``opts.sparsity`` of the adapters' entries masked."""
    sparsify(model, opts.mask_criterion, 1.0 - opts.sparsity, data, input_shape=input_size)


def _prepare_large(model: nn.Module, opts, data, input_size) -> None:
    """Large-Sparse: widen every layer to ``large_rank`` and keep exactly the dense
    SPLoRA's parameter count at the configured rank."""
    rank = model.adapter_rank
    budget = dense_lora_parameters(model, rank)
    wide = large_rank(rank, opts.sparsity)
    for m in model.modules():
        if isinstance(m, SparseSPLoRA):
            m.widen(wide)
    sparsify(model, opts.mask_criterion, data=data, nonzeros=budget, input_shape=input_size)


register(
    Method(
        "sparse",
        lambda conv, rank: SparseSPLoRA(conv, rank=rank),
        label="SparseAdapter SPLoRA r{rank}",
        prepare=_prepare,
        summary="SPLoRA with both factors made sparse at initialisation (--sparsity, --mask-criterion)",
    )
)
register(
    Method(
        "sparse-sppara",
        lambda conv, rank: SparseAdapter(conv),
        label="SparseAdapter SPPaRA",
        uses_rank=False,
        prepare=_prepare,
        summary="SPPaRA's pointwise adapter made sparse at initialisation",
    )
)
register(
    Method(
        "sparse-large",
        lambda conv, rank: SparseSPLoRA(conv, rank=rank),
        label="SparseAdapter Large-Sparse SPLoRA r{rank}",
        prepare=_prepare_large,
        summary="sparse SPLoRA widened to rank ceil(rank / (1 - sparsity)), keeping the parameters of "
        "rank --rank",
    )
)

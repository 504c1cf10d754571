"""SPLoPA (block-SPA; Hedegaard et al., "Structured Pruning Adapters", arXiv
2211.10155): channels cut into blocks, the update a sum of Kronecker products
of per-layer block coefficients with low-rank prototypes shared across layers.

A conv whose output and input channel counts are both multiples of the block
size b (``BLOCK``) is *blocked*: its centre-tap update is

    update = sum_p kron(C_p, U_p V_p)          p = 1 .. n  (``PROTOTYPES``)

with C_p [O/b, I/b] the layer's block coefficients (``positions``; zero at the
start, so the task starts at the base) and P_p = U_p V_p (U_p [b, r], V_p
[r, b], r = min(rank, b)) the prototypes. The prototypes belong to a *set*
that several layers share (``share_prototypes``, the ``splopa_share`` option):

- ``model`` (default): one set for every blocked layer, as the reference
  implementation does (``sp_adapters/splopa.py``: one set per (n, p, q),
  whichever layer asks for it);
- ``stage``: one set per stage, the first part of the conv's name
  (``layer1`` .. ``layer4``; a blocked stem would be ``conv1``).

A layer keeps its own prototypes until ``share_prototypes`` links it (the
training pipeline does so in the method's ``prepare`` hook).

Fallback: a conv that b does not divide on both sides (the 1-channel stem of
the grayscale bases, a 3-channel RGB stem, ragged user bases) has no blocks.
It learns its own dense pointwise update instead -- its "1x1 prototypes",
SPPaRA's update -- and is pruned channel by channel (the pruner does that for
groups whose width is not a multiple of the block).

Pruning removes whole blocks (the registry's ``prune_block``: ``prune_step(...,
block=...)`` ranks blocks, not channels), i.e. block rows and columns of C_p;
the prototypes stay whole. (The reference prunes single blocks of the weight
matrix with a 2-D block mask, block movement pruning; a dense conv runs no
faster for that, so spaedge removes whole block rows and columns.)

Bundle (docs/format.md): a blocked conv ``L`` stores ``L.splopa_coef`` [n,
O'/b, I'/b] (the coefficients of its kept blocks), every prototype set ``S``
is stored once as ``splopa.S.u`` [n, b, r] and ``splopa.S.v`` [n, r, b], and
the metadata ``splopa_sets`` maps each blocked conv to its set. A fallback
conv stores ``L.pointwise_delta``. The runtime expands the Kronecker sum at
task application (``kernels::splopa_expand``); no merged update is stored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from spaedge.adapters.base import AdaptedLayer, centre_tap, layers_of
from spaedge.adapters.registry import Method, RankOptions, register
from spaedge.argtypes import flag
from spaedge.errors import BundleError
from spaedge.pack.format import json_field

__all__ = [
    "SPLoPA",
    "SPLoPAOptions",
    "BLOCK",
    "PROTOTYPES",
    "SHARE",
    "share_prototypes",
    "relink",
    "prototype_sets",
    "bundle_metadata",
    "bundle_tensors",
    "load_tensors",
]

# 8x8 blocks, 4 prototypes: the coefficients are n / b^2 = 1/16 of the merged
# update, the reference's ratio (64 prototypes of 32x32) at a block the 16-channel
# stages of the built-in bases divide. With 4x4 blocks (1/4) the tiny base's
# 30% bundle was half of SPPaRA's; with 8x8 it is a third (the rest is the
# per-channel BN, index and header bytes both store), on `small` a sixth.
BLOCK = 8  # channels per block (and per pruned unit)
PROTOTYPES = 4  # prototypes per set, each of rank min(rank, BLOCK)
SHARE = ("model", "stage")  # scopes of a prototype set (``splopa_share``)
META = "splopa_sets"  # task-bundle metadata: {conv: set}
PREFIX = "splopa."  # task-bundle tensors of the sets: splopa.<set>.u / .v


@dataclass(frozen=True)
class SPLoPAOptions(RankOptions):
    splopa_share: str = flag(
        "model",
        "the layers that share one set of prototypes: every layer whose channels the block "
        "divides (model, default, as the reference implementation) or those of one stage (stage)",
        choices=SHARE,
    )


class SPLoPA(AdaptedLayer):
    """Block-SPA: sum of kron(block coefficients, shared low-rank prototype),
    or a dense pointwise update where the block does not divide the channels."""

    method = "splopa"

    def __init__(self, base, rank: int = 1, block: int = BLOCK, prototypes: int = PROTOTYPES):
        super().__init__(base)
        if rank < 1 or block < 1 or prototypes < 1:
            raise ValueError("SPLoPA needs rank, block and prototypes >= 1")
        o, i = self.base_out_channels, self.base_in_channels
        self.block = block
        # The set whose prototypes this layer uses (None: its own, not linked yet).
        self.proto_set: str | None = None
        if block > 1 and o % block == 0 and i % block == 0:
            r = min(rank, block)
            # Prototypes random, coefficients zero: the task starts at the base (LoRA-style).
            u = torch.empty(prototypes, block, r)
            v = torch.empty(prototypes, r, block)
            nn.init.normal_(u, std=1.0 / math.sqrt(r))
            nn.init.normal_(v, std=1.0 / math.sqrt(block))
            self.proto_u, self.proto_v = nn.Parameter(u), nn.Parameter(v)
            self.positions = nn.Parameter(torch.zeros(prototypes, o // block, i // block))
            self.pointwise = None
        else:
            self.proto_u = self.proto_v = self.positions = None
            self.pointwise = nn.Parameter(torch.zeros(o, i))

    @property
    def blocked(self) -> bool:
        return self.positions is not None

    @property
    def block_shape(self) -> tuple[int, int]:
        """(bo, bi): the blocks' output and input channels (1, 1 for a fallback layer)."""
        if not self.blocked:
            return 1, 1
        return int(self.proto_u.shape[1]), int(self.proto_v.shape[2])

    @property
    def rank(self) -> int:
        return int(self.proto_u.shape[2]) if self.blocked else 0

    def prototypes(self) -> torch.Tensor:
        """P_p = U_p V_p, [n, bo, bi]."""
        return self.proto_u @ self.proto_v

    def update(self) -> torch.Tensor:
        """The [O', I'] centre-tap update."""
        if not self.blocked:
            return self.pointwise
        bo, bi = self.block_shape
        # sum_p kron(C_p, P_p) as one einsum: [a, c] blocks of size bo x bi
        n, a, c = self.positions.shape
        full = torch.einsum("nac,nbd->abcd", self.positions, self.prototypes())  # a, bo, c, bi
        return full.reshape(a * bo, c * bi)

    def delta(self) -> torch.Tensor:
        return centre_tap(self.weight, self.update())

    # ---------------------------------------------------------------- pruning
    def _blocks(self, index: torch.Tensor, size: int, side: str) -> torch.Tensor:
        blocks = torch.div(index, size, rounding_mode="floor")
        uniq, counts = torch.unique_consecutive(blocks, return_counts=True)
        if size > 1 and (counts != size).any():
            raise ValueError(
                f"SPLoPA layer keeps a partial {side} block of size {size}: prune whole blocks "
                f"(prune_step(..., block={size}))"
            )
        return uniq

    def _block_positions(
        self, index: torch.Tensor, size: int, side: str, current: torch.Tensor
    ) -> torch.Tensor:
        """Positions (in the current C) of the blocks ``index`` still touches."""
        kept = self._blocks(index, size, side)
        cur = self._blocks(current, size, side)
        lookup = {int(b): p for p, b in enumerate(cur.tolist())}
        return torch.tensor([lookup[int(b)] for b in kept], dtype=torch.long)

    def keep_out(self, keep):
        old = self.out_index.clone()
        super().keep_out(keep)
        if not self.blocked:
            self.pointwise = nn.Parameter(self.pointwise.data[keep].clone())
            return
        pos = self._block_positions(self.out_index, self.block_shape[0], "output", old)
        self.positions = nn.Parameter(self.positions.data[:, pos].clone())

    def keep_in(self, keep):
        old = self.in_index.clone()
        super().keep_in(keep)
        if not self.blocked:
            self.pointwise = nn.Parameter(self.pointwise.data[:, keep].clone())
            return
        pos = self._block_positions(self.in_index, self.block_shape[1], "input", old)
        self.positions = nn.Parameter(self.positions.data[:, :, pos].clone())

    # ---------------------------------------------------------------- packing
    def bundle_tensors(self):
        # The layer's own part; its prototype set is the model's (bundle_tensors below).
        t = super().bundle_tensors()
        if self.blocked:
            t["splopa_coef"] = self.positions.detach()
        else:
            t["pointwise_delta"] = self.pointwise.detach()
        return t

    def load_bundle_tensors(self, t):
        """Kept channels and the layer's own tensors; the prototypes come with
        the model's sets (``load_tensors``), after every layer is loaded."""
        # The bundle decides the layer's form: kept channels first as a
        # fallback layer, then the coefficients or the dense update.
        self.proto_u = self.proto_v = self.positions = None
        self.pointwise = nn.Parameter(torch.zeros(self.base_out_channels, self.base_in_channels))
        AdaptedLayer.load_bundle_tensors(self, t)
        self.proto_set = None
        if "splopa_coef" in t:
            coef = t["splopa_coef"]
            if coef.dim() != 3:
                raise ValueError(
                    f"splopa_coef has shape {tuple(coef.shape)}, expected [n, O'/bo, I'/bi]"
                )
            self.pointwise = None
            self.positions = nn.Parameter(coef.clone())
        else:
            self.pointwise = nn.Parameter(t["pointwise_delta"].clone())

    def attach(self, u: nn.Parameter, v: nn.Parameter, name: str) -> None:
        """Use prototype set ``name`` (U [n, bo, r], V [n, r, bi]); the same
        Parameter objects may be attached to many layers."""
        if not self.blocked:
            raise ValueError("a fallback (dense pointwise) SPLoPA layer has no prototypes")
        n, a, c = self.positions.shape
        if (
            u.dim() != 3
            or v.dim() != 3
            or u.shape[0] != n
            or v.shape[0] != n
            or u.shape[2] != v.shape[1]
            or u.shape[2] < 1
        ):
            raise ValueError(
                f"prototype set {name!r} ({tuple(u.shape)} x {tuple(v.shape)}) does not fit "
                f"coefficients of shape {tuple(self.positions.shape)} (need [n, bo, r] x [n, r, bi])"
            )
        bo, bi = int(u.shape[1]), int(v.shape[2])
        if a * bo != self.out_channels or c * bi != self.in_channels:
            raise ValueError(
                f"prototype set {name!r}: blocks of {bo}x{bi} times coefficients "
                f"{tuple(self.positions.shape)} cover {a * bo}x{c * bi} channels, the layer keeps "
                f"{self.out_channels}x{self.in_channels}"
            )
        self.proto_u, self.proto_v, self.proto_set = u, v, name

    def extra_repr(self) -> str:
        if not self.blocked:
            return f"{super().extra_repr()}, dense pointwise (no {self.block}-channel blocks)"
        bo, bi = self.block_shape
        s = self.proto_set if self.proto_set is not None else "own"
        return (
            f"{super().extra_repr()}, blocks {bo}x{bi}, {self.positions.shape[0]} prototypes of rank "
            f"{self.rank} (set {s})"
        )


# ---------------------------------------------------------------- sharing
def _layers(model: nn.Module) -> list[tuple[str, SPLoPA]]:
    return layers_of(
        model, SPLoPA, "SPLoPA prototypes need SPLoPA layers (adapt with method 'splopa')"
    )


def _scope_of(name: str, scope: str) -> str:
    if scope == "model":
        return "model"
    return name.split(".", 1)[0]  # the stage: layer1 .. layer4 (conv1 for a blocked stem)


def share_prototypes(model: nn.Module, scope: str = "model") -> dict[str, list[str]]:
    """Make the blocked layers of ``model`` share prototypes per ``scope``
    (``SHARE``): every layer of a set uses one new pair of Parameters, holding
    the values of the set's first layer (conv order), from now on. Call it
    before an optimizer is made. Returns {set: [convs]}."""
    if scope not in SHARE:
        raise ValueError(f"unknown SPLoPA sharing scope {scope!r}; known: {', '.join(SHARE)}")
    sets: dict[str, list[tuple[str, SPLoPA]]] = {}
    for n, m in _layers(model):
        if m.blocked:
            sets.setdefault(_scope_of(n, scope), []).append((n, m))
    for s, members in sets.items():
        owner = members[0][1]
        u = nn.Parameter(owner.proto_u.detach().clone())
        v = nn.Parameter(owner.proto_v.detach().clone())
        for _, m in members:
            m.attach(u, v, s)
    return {s: [n for n, _ in members] for s, members in sets.items()}


def relink(model: nn.Module) -> None:
    """Rebuild the sharing recorded in the layers' ``proto_set`` after a state
    dict was adopted (each layer then holds its own copy of the same values)."""
    owners: dict[str, SPLoPA] = {}
    for _n, m in _layers(model):
        if m.blocked and m.proto_set is not None:
            owner = owners.setdefault(m.proto_set, m)
            m.attach(owner.proto_u, owner.proto_v, m.proto_set)


def prototype_sets(
    model: nn.Module,
) -> tuple[dict[str, str], dict[str, tuple[nn.Parameter, nn.Parameter]]]:
    """({conv: set}, {set: (U, V)}) of the blocked layers, as a bundle stores
    them: a set is the Parameter pair its layers hold, named by their
    ``proto_set`` (a layer with its own prototypes: by its conv name)."""
    conv_set: dict[str, str] = {}
    sets: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
    by_param: dict[int, str] = {}
    for n, m in _layers(model):
        if not m.blocked:
            continue
        key = id(m.proto_u)
        if key not in by_param:
            name = m.proto_set if m.proto_set is not None else n
            if name in sets or not name or "\0" in name:
                raise ValueError(
                    f"SPLoPA layer {n}: prototype set name {name!r} is taken by other prototypes"
                )
            by_param[key] = name
            sets[name] = (m.proto_u, m.proto_v)
        elif sets[by_param[key]][1] is not m.proto_v:
            raise ValueError(f"SPLoPA layer {n} shares U but not V with set {by_param[key]!r}")
        conv_set[n] = by_param[key]
    return conv_set, sets


def bundle_metadata(model: nn.Module) -> dict[str, str]:
    conv_set, _ = prototype_sets(model)
    return {META: json.dumps(conv_set)} if conv_set else {}


def bundle_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every prototype set once: splopa.<set>.u [n, bo, r] and .v [n, r, bi]."""
    _, sets = prototype_sets(model)
    out = {}
    for s, (u, v) in sets.items():
        out[f"{PREFIX}{s}.u"] = u.detach()
        out[f"{PREFIX}{s}.v"] = v.detach()
    return out


def load_tensors(
    model: nn.Module, tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str
) -> None:
    """Attach the bundle's prototype sets to the layers (after every layer's
    ``load_bundle_tensors``): each set one Parameter pair, shared by its convs."""
    layers = dict(_layers(model))
    blocked = {n for n, m in layers.items() if m.blocked}
    conv_set = json_field(meta, META, where) if META in meta else {}
    if not isinstance(conv_set, dict) or not all(isinstance(v, str) for v in conv_set.values()):
        raise BundleError(f"{where}: field '{META}' must be a JSON object {{conv: prototype set}}")
    for n in sorted(blocked - set(conv_set)):
        raise BundleError(
            f"{where}: tensor '{n}.splopa_coef' has no prototype set in field '{META}'"
        )
    sets: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
    for n, s in conv_set.items():
        if n not in blocked:
            raise BundleError(
                f"{where}: field '{META}': entry {n!r} names no conv with splopa_coef"
            )
        if s not in sets:
            try:
                u, v = tensors[f"{PREFIX}{s}.u"], tensors[f"{PREFIX}{s}.v"]
            except KeyError as e:
                raise BundleError(
                    f"{where}: tensor '{e.args[0]}' is missing (prototype set {s!r} of {n!r})"
                ) from None
            sets[s] = (nn.Parameter(u.clone()), nn.Parameter(v.clone()))
        try:
            layers[n].attach(*sets[s], s)
        except ValueError as e:
            raise BundleError(f"{where}: tensor '{n}.splopa_coef': {e}") from None
    unused = sorted(
        k
        for k in tensors
        if k.startswith(PREFIX) and k[len(PREFIX) :].rpartition(".")[0] not in sets
    )
    if unused:
        raise BundleError(f"{where}: tensor '{unused[0]}': no conv uses its prototype set")


def _prepare(model: nn.Module, opts: SPLoPAOptions, data, input_size) -> None:
    share_prototypes(model, opts.splopa_share)


register(
    Method(
        "splopa",
        lambda conv, rank: SPLoPA(conv, rank=rank, block=BLOCK),
        label="SPLoPA r{rank}",
        options=SPLoPAOptions,
        prune_block=BLOCK,
        prepare=_prepare,
        restore=relink,
        bundle_metadata=bundle_metadata,
        bundle_tensors=bundle_tensors,
        load_tensors=load_tensors,
        summary="block-SPA: Kronecker products of prototypes shared across layers",
    )
)

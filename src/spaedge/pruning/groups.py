"""Channel dependency groups, found by Torch-Pruning's DependencyGraph.

This module is the only place that talks to Torch-Pruning. It answers one
question: which layers' channels must be removed together? (A residual add
couples the outputs of every conv feeding it, the BatchNorms after them and the
inputs of every layer reading the sum.) Removal itself is ours
(``spaedge.pruning.prune``), so the rest of the project sees plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from spaedge.adapters.base import AdaptedLayer

__all__ = ["ChannelGroup", "channel_groups"]


@dataclass
class ChannelGroup:
    """Channels that live or die together: ``size`` channels shared by
    the outputs of ``producers``, BatchNorms ``norms`` and inputs of ``consumers``
    (module names)."""

    size: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)


class _AdaptedLayerPruner(tp.pruner.BasePruningFunc):
    """Lets the dependency graph see our adapted layers as conv/linear layers.

    The prune functions are never called by us (removal is ours), but keep
    them correct so the graph's own consistency checks hold.
    """

    def prune_out_channels(self, layer: AdaptedLayer, idxs):
        keep = _complement(layer.out_channels, idxs)
        layer.keep_out(keep)
        return layer

    def prune_in_channels(self, layer: AdaptedLayer, idxs):
        keep = _complement(layer.in_channels, idxs)
        layer.keep_in(keep)
        return layer

    def get_out_channels(self, layer: AdaptedLayer):
        return layer.out_channels

    def get_in_channels(self, layer: AdaptedLayer):
        return layer.in_channels


_PRUNER = _AdaptedLayerPruner()


def _layer_classes(model: nn.Module) -> set[type]:
    # Torch-Pruning looks pruners up by exact class, so register each subclass.
    return {type(m) for m in model.modules() if isinstance(m, AdaptedLayer)}


def _complement(n: int, idxs) -> torch.Tensor:
    drop = set(int(i) for i in idxs)
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


def channel_groups(
    model: nn.Module, example_input: torch.Tensor, head: str = "fc"
) -> list[ChannelGroup]:
    """All prunable channel groups of ``model`` (head outputs excluded)."""
    names = {m: n for n, m in model.named_modules()}
    head_module = model.get_submodule(head)
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example_input,
            customized_pruners={cls: _PRUNER for cls in _layer_classes(model)},
            verbose=False,
        )
    model.train(was_training)
    groups: list[ChannelGroup] = []
    for group in dg.get_all_groups(
        ignored_layers=[head_module], root_module_types=(AdaptedLayer, nn.Conv2d)
    ):
        size = None
        g = ChannelGroup(size=0)
        for item in group:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            name = names.get(module)
            if name is None:  # a functional node (add, relu...) carries no weights
                continue
            if size is None:
                size = len(idxs)
            elif len(idxs) != size:
                raise RuntimeError(
                    f"channel group through {name} maps {len(idxs)} channels onto "
                    f"{size}: concatenations/splits are not supported yet"
                )
            if isinstance(module, nn.BatchNorm2d):
                g.norms.append(name)
            elif dg.is_out_channel_pruning_fn(dep.handler) and isinstance(module, AdaptedLayer):
                g.producers.append(name)
            elif dg.is_in_channel_pruning_fn(dep.handler):
                g.consumers.append(name)
        g.size = size or 0
        if g.producers:
            for lst in (g.producers, g.norms, g.consumers):
                lst[:] = sorted(set(lst))
            groups.append(g)
    return groups

"""The one list of adapter methods.

Each method lives in its own module of this package and registers a
``Method`` there: how to wrap a base conv, its name (the ``--method`` value
and the bundle's ``method`` field), how tables label it, how many channels a
pruning step must remove together, and the hooks of the training pipeline it
needs. Everything that offers or describes methods (the CLI's choices, the
experiment's labels, the pruning block size, bundle packing and loading)
reads this registry; adding a method is one module plus one ``register`` call
(and an import line in ``spaedge/adapters/__init__.py``).

Hooks receive the training configuration as ``opts``: any object with the
method's option attributes (``spaedge.train.TrainConfig`` has them all, e.g.
``pear_share``); options are configuration fields, never parts of a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

__all__ = ["Method", "register", "get_method", "method_names", "method_of"]


@dataclass(frozen=True)
class Method:
    name: str
    # (frozen base nn.Conv2d or nn.Linear, rank) -> an AdaptedLayer
    layer: Callable[[nn.Module, int], nn.Module]
    # How result tables name the method; "{rank}" is replaced by the rank.
    label: str
    summary: str = ""
    uses_rank: bool = True
    # Channels a pruning step removes together (block-SPA prunes whole blocks).
    prune_block: int = 1
    # After adapt, before any training: prepare(model, opts, data, input_size).
    prepare: Callable[[nn.Module, Any, list, tuple], None] | None = None
    # Once channel pruning is over: after_pruning(model, opts, data) -> report dict or None.
    after_pruning: Callable[[nn.Module, Any, list], dict | None] | None = None
    # After a checkpoint's state dict was adopted: rebuild what a state dict cannot hold.
    restore: Callable[[nn.Module], None] | None = None
    # Extra task-bundle metadata of a trained model, and its inverse at load time.
    bundle_metadata: Callable[[nn.Module], dict[str, str]] | None = None
    load_metadata: Callable[[nn.Module, dict[str, str], str], None] | None = None
    # Task-bundle tensors of the model as a whole, stored once (SPLoPA's shared
    # prototypes): bundle_tensors(model) -> {name: tensor}; and their inverse,
    # load_tensors(model, every tensor of the bundle, metadata, where), called
    # after every layer's load_bundle_tensors.
    bundle_tensors: Callable[[nn.Module], dict[str, Any]] | None = None
    load_tensors: Callable[[nn.Module, dict[str, Any], dict[str, str], str], None] | None = None

    def describe(self, rank: int) -> str:
        """The table label at ``rank``."""
        return self.label.format(rank=rank)


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"adapter method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown adapter method {name!r}; known: {', '.join(_METHODS)}") from None


def method_names() -> list[str]:
    """Registered method names, in registration order (the CLI's choices)."""
    return list(_METHODS)


def method_of(model: nn.Module) -> Method:
    """The method an adapted model was built with (``spaedge.adapters.adapt``)."""
    name = getattr(model, "adapter_method", None)
    if name is None:
        raise ValueError("the model is not adapted: call spaedge.adapters.adapt first")
    return get_method(name)

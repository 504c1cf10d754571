"""The one list of adapter methods.

Each method lives in its own module of this package and registers a
``Method`` there: how to wrap a base conv, its name (the ``--method`` value
and the bundle's ``method`` field), how tables label it, its options, how many
channels a pruning step must remove together, and the hooks of the training
pipeline it needs. Everything that offers or describes methods (the CLI's
choices and option flags, the experiment's labels and cells, the pruning block
size, bundle packing and loading) reads this registry; adding a method is one
module plus one ``register`` call (and an import line in
``spaedge/adapters/__init__.py``).

Options, peft style: a method declares them as a frozen dataclass deriving
from ``MethodOptions`` (``RankOptions`` for a method with a rank), each field
made with ``spaedge.argtypes.flag`` (default, help, parser, choices). The
field name is the ``--flag`` (dashes for underscores) and the key in a run's
``config.json``; methods that take the same option (``rank``, the
SparseAdapter methods' ``sparsity``) declare it once and share the field
(``register`` refuses two definitions of one name). ``TrainConfig.options``
holds the chosen method's options; hooks receive them as ``opts``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from spaedge.argtypes import flag, positive_int

__all__ = [
    "Method",
    "MethodOptions",
    "RankOptions",
    "register",
    "get_method",
    "method_names",
    "method_of",
    "option_fields",
]


@dataclass(frozen=True)
class MethodOptions:
    """A method's options (none here): subclass it with ``flag`` fields."""


@dataclass(frozen=True)
class RankOptions(MethodOptions):
    """The options of a method with a rank (and the base of its own options)."""

    rank: int = flag(8, "adapter rank (default {default})", parse=positive_int)


@dataclass(frozen=True)
class Method:
    name: str
    # (frozen base nn.Conv2d or nn.Linear, rank) -> an AdaptedLayer
    layer: Callable[[nn.Module, int], nn.Module]
    # How result tables name the method; "{rank}" is replaced by the rank.
    label: str
    summary: str = ""
    # The options dataclass (MethodOptions or a subclass); TrainConfig.options is one.
    options: type = MethodOptions
    # Channels a pruning step removes together (block-SPA prunes whole blocks).
    prune_block: int = 1
    # After adapt, before any training: prepare(model, opts, data, input_size).
    prepare: Callable[[nn.Module, Any, list, tuple], None] | None = None
    # Once channel pruning is over: after_pruning(model, opts, data) -> the metrics the
    # method adds to the run's ({name: number}, names prefixed by the method), or None.
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

    @property
    def option_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options)]

    @property
    def uses_rank(self) -> bool:
        """Whether the method has a rank (a ``rank`` option)."""
        return "rank" in self.option_names


_METHODS: dict[str, Method] = {}
# option name -> (its field, the methods taking it)
_OPTIONS: dict[str, tuple[dataclasses.Field, list[str]]] = {}


def _same_option(a: dataclasses.Field, b: dataclasses.Field) -> bool:
    return a is b or (a.default == b.default and dict(a.metadata) == dict(b.metadata))


def register(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"adapter method {method.name!r} is registered twice")
    if not (
        isinstance(method.options, type)
        and issubclass(method.options, MethodOptions)
        and dataclasses.is_dataclass(method.options)
    ):
        raise TypeError(f"method {method.name!r}: options must be a MethodOptions dataclass")
    for f in dataclasses.fields(method.options):
        if "help" not in f.metadata or f.default is dataclasses.MISSING:
            raise TypeError(
                f"method {method.name!r}: option {f.name!r} needs a default and help "
                "(declare it with spaedge.argtypes.flag)"
            )
        if f.name in _OPTIONS and not _same_option(_OPTIONS[f.name][0], f):
            raise ValueError(
                f"method {method.name!r}: option {f.name!r} is declared differently by "
                f"{', '.join(_OPTIONS[f.name][1])}: share one declaration, or name it apart"
            )
    _METHODS[method.name] = method
    for f in dataclasses.fields(method.options):
        _OPTIONS.setdefault(f.name, (f, []))[1].append(method.name)
    return method


def option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every method option: its field and the methods that take it, in registration order."""
    return {name: (f, list(methods)) for name, (f, methods) in _OPTIONS.items()}


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

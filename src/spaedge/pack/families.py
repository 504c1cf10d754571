"""The task bundle's tensor families, as the runtime lists them.

This table mirrors ``csrc/runtime/families/families.inc`` (the runtime's
list, exposed as :data:`spaedge.runtime.FAMILIES`; ``tests/pack/
test_families.py`` checks that the two agree, in order). A method is a
composition of families: its layers' ``bundle_tensors`` and its model-level
tensors and metadata must each belong to one, and :func:`spaedge.pack.
bundle.task_bundle` refuses anything else, so the packer cannot write what
the runtime would refuse. A new method that only composes existing families
changes neither this table nor the packer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Family", "FAMILIES", "CONV_OWN", "conv_family", "model_family", "metadata_family"]


@dataclass(frozen=True)
class Family:
    name: str
    #: suffixes of ``<conv>.<suffix>`` tensors
    conv_tensors: tuple[str, ...] = ()
    #: tensors stored once for the model; ``<set>`` stands for a name
    model_tensors: tuple[str, ...] = ()
    #: metadata key it reads ("" none)
    metadata: str = ""

    def owns_model_tensor(self, name: str) -> bool:
        return any(_pattern(p).fullmatch(name) for p in self.model_tensors)


def _pattern(p: str) -> re.Pattern:
    return re.compile(re.escape(p).replace(re.escape("<set>"), r".+"))


#: In the runtime's order (csrc/runtime/families/families.inc).
FAMILIES: tuple[Family, ...] = (
    Family("low-rank", ("lora_a", "lora_b")),
    Family("dense-delta", ("weight_delta",)),
    Family("pointwise", ("pointwise_delta",)),
    Family(
        "prototype-sets",
        ("splopa_coef",),
        ("splopa.<set>.u", "splopa.<set>.v"),
        "splopa_sets",
    ),
    Family(
        "sparse-bitmask",
        (
            "sparse_delta_values",
            "sparse_delta_mask",
            "lora_rank",
            "lora_a_values",
            "lora_a_mask",
            "lora_b_values",
            "lora_b_mask",
        ),
    ),
    Family("shared-adapters", (), ("shared.<set>.a", "shared.<set>.b"), "shared_adapters"),
)

#: Every conv's own tensors, outside the families: kept channels, task bias.
CONV_OWN = ("out_index", "in_index", "bias")


def conv_family(suffix: str) -> Family | None:
    """The family of a ``<conv>.<suffix>`` tensor (None: no family has it)."""
    return next((f for f in FAMILIES if suffix in f.conv_tensors), None)


def model_family(name: str) -> Family | None:
    """The family of a tensor stored once for the model."""
    return next((f for f in FAMILIES if f.owns_model_tensor(name)), None)


def metadata_family(key: str) -> Family | None:
    """The family that reads metadata ``key``."""
    return next((f for f in FAMILIES if f.metadata and f.metadata == key), None)

"""The training configuration: one dataclass, the command line generated from it.

Every field is one ``--flag`` of ``spaedge train`` and ``spaedge pack`` (the
field name with dashes; ``spaedge.cli.common.add_config_flags``), with the
help text, value parser and choices kept here beside the default. ``options``
holds the chosen method's options (a dataclass the method declares in its
module, ``spaedge.adapters.registry``), whose fields are flags too. A run
directory's ``config.json`` is this dataclass as flat JSON (the method's
options beside the other fields); a checkpoint resumes only under the same
config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from spaedge.adapters.registry import MethodOptions, get_method, method_names
from spaedge.argtypes import flag as _flag
from spaedge.argtypes import (
    nonneg_int,
    parse_density,
    path_text,
    positive_int,
    unit_fraction,
)
from spaedge.pruning.criteria import CRITERIA
from spaedge.pruning.prune import SCHEDULES

__all__ = ["TrainConfig", "SIMILAR", "AUTO"]

# The schedule that prunes once, before training, by the vote of similar tasks (spaedge.train.library).
SIMILAR = "similar"
# base = AUTO: the base follows the task (spaedge.train.setup.default_base).
AUTO = "auto"


def _methods() -> str:
    def flags(m) -> str:
        names = m.option_names
        return f" ({', '.join('--' + n.replace('_', '-') for n in names)})" if names else ""

    return "; ".join(f"{m.name}: {m.summary}{flags(m)}" for m in map(get_method, method_names()))


@dataclass
class TrainConfig:
    task: str = _flag("digits", "task name (see `spaedge tasks`; default {default})")
    base: str = _flag(
        AUTO,
        "base network: tiny or small (built-in, 28x28 gray; small is ResNet-18's "
        "layout at half width), resnet18/34/50 (ImageNet weights, "
        "downloaded once), their -cifar variants (3x3 stem, 32x32 input); default auto: "
        "resnet18 for natural RGB images, tiny for grayscale ones",
    )
    base_weights: str | None = _flag(
        None,
        "weights file for the base (.pth state dict or .safetensors, "
        "torchvision names), or 'random' for an untrained base (speed "
        "tests); default: the base's own pretrained weights",
        parse=path_text,
        metavar="FILE",
    )
    data_dir: str | None = _flag(
        None,
        "where the task's data is (default: the cache, $SPAEDGE_DATA or "
        "~/.cache/spaedge/data, where flowers and cifar10 download on first use)",
        parse=path_text,
        metavar="DIR",
    )
    method: str = _flag(
        "splora",
        "adapter method (default {default}). {described}",
        choices=method_names,
        describe=_methods,
    )
    # The method's options (its own dataclass, spaedge.adapters.registry); None: its defaults.
    options: MethodOptions | None = field(default=None, metadata={"method_options": True})
    density: float = _flag(
        0.3,
        "fraction of the base's weights to keep, e.g. 0.3 or 30%% (default {default})",
        parse=parse_density,
    )
    criterion: str = _flag(
        "magnitude", "channel importance (default {default})", choices=lambda: list(CRITERIA)
    )
    schedule: str = _flag(
        "iterative",
        "iterative: --prune-step of the filters per step with recovery epochs "
        "(default); oneshot: prune once to the density; similar: prune once before "
        "training by the similarity-weighted vote of the nearest tasks in --library "
        "(see `spaedge library -h`)",
        choices=lambda: [*SCHEDULES, SIMILAR],
    )
    library: str | None = _flag(
        None,
        "for --schedule similar: a library directory (`spaedge library add`), run "
        "directories or a directory of runs; several separated by commas",
        parse=path_text,
        metavar="DIR",
    )
    neighbours: int = _flag(
        3,
        "for --schedule similar: nearest library tasks that vote (default {default})",
        parse=positive_int,
    )
    train_limit: int = _flag(
        0,
        "train (and score channels) on the first N training images only (default 0: all)",
        parse=nonneg_int,
        metavar="N",
    )
    test_limit: int = _flag(
        0,
        "evaluate on the first N test images only (default 0: all)",
        parse=nonneg_int,
        metavar="N",
    )
    val_limit: int = _flag(
        0,
        "validate on the first N validation images only (default 0: all)",
        parse=nonneg_int,
        metavar="N",
    )
    score_batches: int = _flag(
        4,
        "training batches the data-driven criteria, SparseAdapter masks and Pear score "
        "on (default {default})",
        parse=positive_int,
        metavar="N",
    )
    prune_step: float = _flag(
        0.05,
        "fraction of filters removed per pruning step (default {default})",
        parse=unit_fraction,
    )
    # The schedule and rate defaults were chosen on digits (docs/benchmarks.md,
    # "Measurements behind the toolchain's defaults").
    epochs: int = _flag(
        12, "adaptation epochs before pruning (default {default})", parse=nonneg_int
    )
    total_epochs: int = _flag(
        0,
        "when > 0, the whole budget in epochs: the final phase gets what adaptation and "
        "recovery left, so every schedule trains as long (default 0: --final-epochs)",
        parse=nonneg_int,
        metavar="N",
    )
    early_stopping: int = _flag(
        0,
        "when > 0, the final phase stops after N epochs without a better validation "
        "accuracy and keeps the best epoch's model (default 0: off)",
        parse=nonneg_int,
        metavar="N",
    )
    recovery_epochs: int = _flag(
        1, "epochs after each pruning step (default {default})", parse=nonneg_int
    )
    final_epochs: int = _flag(
        8, "epochs after the last pruning step (default {default})", parse=nonneg_int
    )
    batch_size: int = _flag(32, "training batch size (default {default})", parse=positive_int)
    lr: float = _flag(1e-2, "learning rate (default {default})", parse=float)
    weight_decay: float = _flag(0.0, "AdamW weight decay (default {default})", parse=float)
    seed: int = _flag(
        0,
        "random seed: the same seed, config and data give the same bundle (default {default})",
        parse=int,
    )

    def __post_init__(self) -> None:
        method = get_method(self.method)
        if self.options is None:
            self.options = method.options()
        elif type(self.options) is not method.options:
            raise ValueError(
                f"options {type(self.options).__name__} are not those of method {self.method!r} "
                f"({method.options.__name__})"
            )

    @property
    def rank(self) -> int | None:
        """The adapter rank, None for a method without one."""
        return getattr(self.options, "rank", None)

    def to_json(self) -> dict:
        """Flat: every field but ``options``, the method's options beside them."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "options":
                out.update(dataclasses.asdict(self.options))
            else:
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        """The config ``to_json`` wrote. Keys that are neither fields nor the method's
        options are ignored (a config.json of an older version held every method's)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"options"}
        kw = {k: v for k, v in d.items() if k in known}
        method = get_method(kw.get("method", cls.method))
        options = method.options(**{k: v for k, v in d.items() if k in method.option_names})
        return cls(**kw, options=options)

"""Training checkpoints: resume ``spaedge train`` after an interruption.

One file, ``<run dir>/checkpoint.safetensors``, rewritten atomically
(``atomic_write_bytes``: temp file + fsync + rename) at the end of every
training epoch. It holds

- the model state: every parameter and buffer, with its *pruned* shape (the
  kept-channel indices ``out_index``/``in_index`` are buffers too), so the
  pruned model is rebuilt by building the unpruned task model from the config
  and adopting the stored tensors and shapes;
- the optimizer (AdamW moments, step counts) and LR-scheduler state of the
  ``fit`` in progress;
- the RNG states (torch global, the batch-order generator, numpy, random);
- the pipeline position: phase (adapt / recover / final), pruning step, epochs
  done in the phase, pruning steps done and the per-step channel count;
- the training config and the run's identity (spaedge.train.identity: the
  base weights' content hash and the data's identity); a checkpoint with
  another config or identity is not resumed.

Only safetensors and JSON: no pickle is ever written or read.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from spaedge.pack.format import atomic_write_bytes
from spaedge.paths import MAX_BUNDLE_BYTES, parse_json, read_regular
from spaedge.pruning.groups import channel_groups
from spaedge.pruning.prune import density, prune_to_density
from spaedge.train import distributed

__all__ = [
    "CHECKPOINT",
    "Position",
    "Checkpoint",
    "CheckpointError",
    "save",
    "load",
    "adopt_state",
    "PHASES",
]

CHECKPOINT = "checkpoint.safetensors"
PHASES = {"adapt": 0, "recover": 1, "final": 2}
FORMAT = "spaedge-checkpoint"


@dataclass
class Position:
    phase: str = "adapt"  # adapt | recover | final
    step: int = 0  # pruning step the recovery belongs to (0 outside recovery)
    epochs_done: int = 0  # epochs of this phase completed
    prune_steps: int = 0  # pruning steps done so far
    per_step: int = 0  # channels removed per pruning step (fixed at the first step)

    def key(self) -> tuple[int, int]:
        return PHASES[self.phase], self.step


@dataclass
class Checkpoint:
    position: Position
    config: dict
    model: dict[str, torch.Tensor]
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    extra_tensors: dict = field(default_factory=dict)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state_dict -> (tensors, JSON-able rest)."""
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, s in state["state"].items():
        entry = {}
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().clone().contiguous()
                entry[k] = {"tensor": f"opt.{pid}.{k}"}
            else:
                entry[k] = v
        rest["state"][str(pid)] = entry
    return tensors, rest


def _unflatten_optimizer(rest: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for pid, entry in rest["state"].items():
        state[int(pid)] = {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for k, v in entry.items()
        }
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.generator": generator.get_state(),
        "rng.numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
    }
    rest = {
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, rest


def restore_rng(tensors: dict[str, torch.Tensor], rest: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    n = rest["numpy"]
    np.random.set_state(
        (n[0], tensors["rng.numpy_keys"].numpy().astype(np.uint32), n[1], n[2], n[3])
    )
    p = rest["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save(
    path: Path,
    *,
    position: Position,
    config: dict,
    model: nn.Module,
    generator: torch.Generator,
    optimizer=None,
    scheduler=None,
    extra: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    identity: dict | None = None,
) -> None:
    tensors = {
        f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()
    }
    meta = {
        "format": FORMAT,
        "position": json.dumps(position.__dict__),
        "config": json.dumps(config, sort_keys=True),
        "requires_grad": json.dumps(
            sorted(n for n, p in model.named_parameters() if p.requires_grad)
        ),
    }
    if optimizer is not None:
        t, rest = _flatten_optimizer(optimizer.state_dict())
        tensors.update(t)
        meta["optimizer"] = json.dumps(rest)
        meta["scheduler"] = json.dumps(scheduler.state_dict())
    t, rest = rng_state(generator)
    tensors.update(t)
    meta["rng"] = json.dumps(rest)
    if extra is not None:  # what else the run needs to resume exactly (validation tracking)
        meta["extra"] = json.dumps(extra)
    if identity is not None:  # base weights and data actually used (spaedge.train.identity)
        meta["identity"] = json.dumps(identity, sort_keys=True)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().clone().contiguous()
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (corrupt, or made with another
    config): it is never dropped silently; the message names --restart."""


def _metadata(data: bytes, path: Path) -> dict:
    """The ``__metadata__`` of safetensors bytes, the header parsed depth-limited."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if n < 0 or 8 + n > len(data):
        raise ValueError("truncated: the header does not fit the file")
    header = parse_json(data[8 : 8 + n], f"{path}: header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _field(meta: dict, key: str, path: Path):
    """A JSON metadata field, parsed depth-limited (KeyError if missing)."""
    return parse_json(meta[key], f"{path}: field {key!r}")


def load(
    path: Path,
    config: dict,
    normalise: Callable[[dict], dict] | None = None,
    identity: dict | None = None,
) -> Checkpoint | None:
    """The checkpoint at ``path`` (None if there is none). One made with another
    ``config`` or (when given) another ``identity`` (base weights, data), or
    unreadable, raises CheckpointError: discarding a resumable run is the
    user's decision (``--restart``). ``normalise`` rewrites the stored config as
    this version writes it before they are compared (a config of an older
    version: ``TrainConfig.from_json`` then ``to_json``)."""
    if not path.exists():
        return None
    restart = "pass --restart to discard it and train from the start, or --out another directory"
    try:
        data = read_regular(
            path, "checkpoint", MAX_BUNDLE_BYTES
        )  # a FIFO is refused, not waited on
        meta = _metadata(data, path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        stored = parse_json(meta.get("config", "null"), f"{path}: field 'config'")
        if not isinstance(stored, dict):
            raise ValueError("no config")
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path} is not a readable spaedge checkpoint ({e}): {restart}"
        ) from None
    if normalise is not None:
        # A config this version cannot read is compared as stored: other settings.
        with contextlib.suppress(ValueError, TypeError):
            stored = json.loads(json.dumps(normalise(stored), sort_keys=True))
    want = json.loads(json.dumps(config, sort_keys=True))
    if stored != want:
        diff = [k for k in sorted(set(stored) | set(want)) if stored.get(k) != want.get(k)]
        what = ", ".join(f"{k} {stored.get(k)!r} there, {want.get(k)!r} now" for k in diff[:3])
        raise CheckpointError(
            f"{path.parent} holds an unfinished run with other settings ({what}"
            f"{', ...' if len(diff) > 3 else ''}): {restart}"
        )
    if identity is not None:
        from spaedge.train.identity import differences

        try:
            had = parse_json(meta.get("identity", "null"), f"{path}: field 'identity'")
        except ValueError:
            had = None
        what = differences(had, json.loads(json.dumps(identity, sort_keys=True)))
        if what:
            raise CheckpointError(
                f"{path.parent} holds an unfinished run of the same settings on other inputs "
                f"({'; '.join(what)}): {restart}"
            )
    try:
        tensors = st_load(data)
        ck = Checkpoint(
            position=Position(**_field(meta, "position", path)),
            config=config,
            model={k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")},
            rng={
                "tensors": {k: v for k, v in tensors.items() if k.startswith("rng.")},
                "rest": _field(meta, "rng", path),
            },
        )
        if "optimizer" in meta:
            ck.optimizer = _unflatten_optimizer(_field(meta, "optimizer", path), tensors)
            ck.scheduler = _field(meta, "scheduler", path)
        ck.extra = _field({"extra": "{}", **meta}, "extra", path)
        ck.extra_tensors = {
            k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")
        }
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path} is not a readable spaedge checkpoint ({e}): {restart}"
        ) from None
    return ck


def adopt_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict whose tensors may have pruned shapes: every parameter
    and buffer takes the stored tensor (and shape), keeping requires_grad, and the
    shape attributes of BatchNorm / Linear follow."""
    own = dict(model.state_dict())
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    with torch.no_grad():
        for name, value in state.items():
            mod_name, _, attr = name.rpartition(".")
            mod = model.get_submodule(mod_name) if mod_name else model
            cur = getattr(mod, attr)
            if isinstance(cur, nn.Parameter):
                setattr(mod, attr, nn.Parameter(value.clone(), requires_grad=cur.requires_grad))
            elif cur.shape == value.shape:
                cur.copy_(value)
            else:
                setattr(mod, attr, value.clone().to(cur.dtype))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_features = int(m.weight.shape[0])
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = int(m.weight.shape[1]), int(m.weight.shape[0])


class Session:
    """The checkpointing side of one ``train.run``: saves after every epoch and,
    when resuming, tells each ``fit`` where to start and restores its state."""

    def __init__(
        self,
        run_dir: Path,
        config: dict,
        model: nn.Module,
        generator: torch.Generator,
        resume: bool = True,
        normalise: Callable[[dict], dict] | None = None,
        identity: dict | None = None,
    ):
        self.path = Path(run_dir) / CHECKPOINT
        self.config, self.model, self.generator = config, model, generator
        self.identity = identity
        self.ck = load(self.path, config, normalise, identity) if resume else None
        self.pos = Position()
        self.resumed_from: Position | None = None
        # Saved with every checkpoint: what else must survive an interruption (set by the pipeline).
        self.extra: dict = {}
        self.extra_tensors: dict[str, torch.Tensor] = {}
        if self.ck is not None:
            adopt_state(model, self.ck.model)
            self.pos = Position(**self.ck.position.__dict__)
            self.resumed_from = Position(**self.ck.position.__dict__)

    def restore_rng(self) -> None:
        """Call once, after set-up and right before the first epoch would run."""
        if self.ck is not None:
            restore_rng(self.ck.rng["tensors"], self.ck.rng["rest"], self.generator)

    def begin(self, phase: str, step: int, optimizer, scheduler) -> int:
        """Epochs of this fit already done (all of them if the phase was finished)."""
        self.pos.phase, self.pos.step = phase, step
        ck = self.ck
        if ck is None:
            return 0
        key, done = (PHASES[phase], step), ck.position.key()
        if key < done:
            return 1 << 30  # finished before the checkpoint
        if key > done:
            return 0
        if ck.optimizer is not None:
            optimizer.load_state_dict(ck.optimizer)
            scheduler.load_state_dict(ck.scheduler)
        return ck.position.epochs_done

    def end_epoch(self, epochs_done: int, optimizer, scheduler) -> None:
        self.pos.epochs_done = epochs_done
        if (
            not distributed.is_main()
        ):  # under torchrun rank 0 checkpoints (every rank holds the same model)
            return
        save(
            self.path,
            position=self.pos,
            config=self.config,
            model=self.model,
            generator=self.generator,
            optimizer=optimizer,
            scheduler=scheduler,
            extra=self.extra,
            extra_tensors=self.extra_tensors,
            identity=self.identity,
        )

    def finish(self) -> None:
        """The run directory is complete: the checkpoint is not needed any more."""
        self.path.unlink(missing_ok=True)


def prune_resumable(
    session: Session | None,
    model: nn.Module,
    example: torch.Tensor,
    target: float,
    *,
    step_fraction: float,
    criterion: str,
    recover,
    **prune_kwargs,
) -> None:
    """``prune_to_density`` that continues from the checkpoint's pruning step with
    the same channels-per-step as the uninterrupted run (the per-step count is
    fixed by the unpruned model, so it is stored, not recomputed). Without a
    session it is ``prune_to_density``."""
    if session is None:
        prune_to_density(
            model,
            example,
            target,
            step_fraction=step_fraction,
            criterion=criterion,
            recover=recover,
            **prune_kwargs,
        )
        return
    done = session.pos.prune_steps
    if done == 0:
        total = sum(g.size for g in channel_groups(model, example))
        session.pos.per_step = max(1, math.ceil(step_fraction * total))
        fraction = step_fraction
    else:
        recover(done, density(model))  # finish (or skip) the recovery the checkpoint was in
        total = sum(g.size for g in channel_groups(model, example))
        fraction = min(
            1.0, (session.pos.per_step - 0.5) / total
        )  # ceil(fraction * total) == per_step

    def rec(step: int, d: float) -> None:
        session.pos.prune_steps = done + step
        recover(done + step, d)

    prune_to_density(
        model,
        example,
        target,
        step_fraction=fraction,
        criterion=criterion,
        recover=rec,
        **prune_kwargs,
    )  # schedule, block, score_kwargs (spaedge.train.pipeline)

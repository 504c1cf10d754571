"""The one adapt -> prune -> train pipeline of a task.

``train_task(cfg)`` is every training in spaedge (``spaedge train`` and
``pack``, each cell of ``spaedge experiment``, the benchmark scripts): build
the task model (base, task head, the method's adapters), let the method
prepare (``Method.prepare``: SparseAdapter's masks), adapt for ``epochs``,
prune to ``density`` (iterative steps with recovery epochs, one shot, or once
before training by the vote of similar tasks), let the method finish
(``Method.after_pruning``, whose metrics join the run's), train the final
epochs, then measure. ``run(cfg, out_dir)`` is ``train_task`` with a
checkpoint after every epoch and the run directory written at the end
(``task.safetensors``, ``config.json``, ``metrics.json``, ``plan.json``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from spaedge.adapters import AdaptedLayer, get_method, learned_parameters
from spaedge.models.stats import count_macs
from spaedge.pack.bundle import TaskSpec, task_bundle
from spaedge.pack.format import serialise
from spaedge.pack.materialize import whole_model_bytes
from spaedge.progress import Reporter
from spaedge.pruning.criteria import DATA_CRITERIA
from spaedge.pruning.prune import density
from spaedge.pruning.similar import channel_votes, nearest, prune_by_votes, vote_weights
from spaedge.tasks import Task, first_items, score_batches
from spaedge.train import distributed
from spaedge.train.checkpoint import Session, prune_resumable
from spaedge.train.config import SIMILAR, TrainConfig
from spaedge.train.device import TrainEnv, resolve_device
from spaedge.train.identity import run_identity
from spaedge.train.library import load_library, plan_bytes, run_plan
from spaedge.train.loops import Diverged, evaluate, fit
from spaedge.train.rundir import write_run
from spaedge.train.setup import build_task_model, embed_task, resolve
from spaedge.train.validation import Validation

__all__ = ["Trained", "train_task", "run"]


@dataclass
class Trained:
    """What ``train_task`` leaves: the trained, pruned model and its measurements."""

    model: nn.Module
    task: Task
    base_hash: str
    metrics: dict
    config: TrainConfig  # the resolved config (spaedge.train.setup.resolve)
    similar: dict | None = None  # --schedule similar: neighbours and the task's embedding
    # What the method's after_pruning hook reported (also in ``metrics``), e.g. Pear's counts.
    method_metrics: dict = field(default_factory=dict)
    session: Session | None = None  # the checkpoint session, when checkpointing
    identity: dict | None = None  # base weights and data used (spaedge.train.identity)


def train_task(
    cfg: TrainConfig,
    *,
    reporter: Reporter | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    env: TrainEnv | None = None,
    curve: bool = False,
) -> Trained:
    """Adapt, prune and train the config's task; return the model and its metrics.

    The config is resolved first (``setup.resolve``: the task's data and the
    base's weights made local, ``base="auto"`` chosen); ``trained.config`` is
    the resolved one. With ``checkpoint_dir`` it checkpoints after every epoch
    (``checkpoint.safetensors``) and, with ``resume``, continues from a
    checkpoint made with the same config, reaching the same model as an
    uninterrupted run (spaedge.train.checkpoint). ``env``: device, precision,
    loader processes, downloads (spaedge.train.device). ``curve``: record the
    validation accuracy after every epoch (``metrics["curve"]``)."""
    reporter = reporter or Reporter(enabled=False)
    env = env or TrainEnv()
    cfg = resolve(cfg, allow_download=env.download, log=reporter.log)
    device = resolve_device(env.device)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    task, model, bhash = build_task_model(cfg, reporter.log)
    method = get_method(cfg.method)
    # The fixed batches data-driven criteria, masks and Pear score on, drawn
    # from the images training may see.
    score_data = score_batches(
        first_items(task.split("train"), cfg.train_limit),
        cfg.score_batches,
        cfg.batch_size,
        cfg.seed,
    )
    if method.prepare is not None:
        method.prepare(model, cfg.options, score_data, task.input_size)
    train_ds = first_items(task.split("train", augment=True), cfg.train_limit)
    val_ds = first_items(task.split("val"), cfg.val_limit)
    test_ds = first_items(task.split("test"), cfg.test_limit)
    example = torch.zeros(1, *task.input_size)
    macs_full = count_macs(model, task.input_size)
    identity = run_identity(task, bhash)  # what the run is, beyond its config's spelling
    session = None
    if checkpoint_dir is not None:
        session = Session(
            Path(checkpoint_dir),
            cfg.to_json(),
            model,
            gen,
            resume=resume,
            normalise=lambda d: TrainConfig.from_json(d).to_json(),
            identity=identity,
        )
        if session.resumed_from is not None:
            p = session.resumed_from
            reporter.log(
                f"resuming from {session.path}: {p.phase} (step {p.step}), {p.epochs_done} epochs done"
            )
            if method.restore is not None:
                method.restore(model)
        session.restore_rng()
    kw = dict(
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        generator=gen,
        reporter=reporter,
        session=session,
        env=env,
    )
    reporter.log(
        f"task {task.name}: {len(train_ds)} train / {len(val_ds)} val / {len(test_ds)} test images, "
        f"{task.num_classes} classes, input {'x'.join(map(str, task.input_size))}; "
        f"base {cfg.base} ({model.weights_source}); training on {device}"
    )

    def val_note(
        text: str,
    ) -> None:  # validation accuracy as progress (a whole pass: only when shown)
        if reporter.enabled:
            reporter.log(f"{text}: val accuracy {evaluate(model, val_ds, env=env):.2%}")

    tracking = Validation(
        model, val_ds, env=env, patience=cfg.early_stopping, curve=curve, session=session
    )
    similar = None
    if cfg.schedule == SIMILAR and (session is None or session.resumed_from is None):
        similar = _prune_from_library(
            model, cfg, task, bhash, example, reporter.log
        )  # resumed: shapes restored
    fit(
        model,
        train_ds,
        cfg.epochs,
        description="adapt",
        phase=("adapt", 0),
        on_epoch=tracking.hook("adapt"),
        **kw,
    )
    val_note(f"adapted at density {density(model):.1%}")
    steps = [0]  # pruning steps recovered from (for --total-epochs)

    def recover(step: int, d: float) -> None:
        steps[0] = max(steps[0], step)
        fit(
            model,
            train_ds,
            cfg.recovery_epochs,
            description=f"recover {step}",
            phase=("recover", step),
            on_epoch=tracking.hook("recover", step),
            **kw,
        )
        val_note(f"pruning step {step}: density {d:.1%}")

    if cfg.density < 1.0 and cfg.schedule != SIMILAR:
        prune_resumable(
            session,
            model,
            example,
            cfg.density,
            step_fraction=cfg.prune_step,
            criterion=cfg.criterion,
            recover=recover,
            schedule=cfg.schedule,
            block=method.prune_block,
            score_kwargs={"data": score_data} if cfg.criterion in DATA_CRITERIA else None,
            agree=distributed.agree,
        )
    method_metrics = {}
    if method.after_pruning is not None:
        method_metrics = method.after_pruning(model, cfg.options, score_data) or {}
        if method_metrics:
            reporter.log(
                f"{method.name} after pruning: "
                + ", ".join(f"{k} {v}" for k, v in method_metrics.items())
            )
    final_epochs = cfg.final_epochs
    if cfg.total_epochs:  # the same budget for every schedule: the final phase takes what is left
        recoveries = steps[0] if cfg.schedule == "iterative" else min(steps[0], 1)
        final_epochs = max(0, cfg.total_epochs - cfg.epochs - recoveries * cfg.recovery_epochs)
    fit(
        model,
        train_ds,
        final_epochs,
        description="final",
        phase=("final", 0),
        on_epoch=tracking.hook("final"),
        **kw,
    )
    best_val = tracking.finish()
    if best_val is not None:
        reporter.log(f"kept the final phase's best epoch (val accuracy {best_val:.2%})")
    bad = [
        n
        for n, p in model.state_dict().items()
        if p.is_floating_point() and not torch.isfinite(p).all()
    ]
    if bad:
        raise Diverged(
            f"training left non-finite values in {bad[0]} (and {len(bad) - 1} more tensors): lower --lr "
            "and run again; nothing was written"
        )
    metrics = {
        "task": task.name,
        "val_accuracy": evaluate(model, val_ds, env=env),
        "test_accuracy": evaluate(model, test_ds, env=env),
        "density": density(model),
        "learned_parameters": learned_parameters(model),
        "macs": count_macs(model, task.input_size),
        "macs_unpruned": macs_full,
        "whole_model_bytes": whole_model_bytes(model),
        "seconds": round(time.time() - t0, 1),
        "base_hash": bhash,
        "device": str(device),
        "final_epochs": final_epochs,
        **method_metrics,
    }
    if curve:
        metrics["curve"] = tracking.history
    if similar is not None:
        metrics["similar_tasks"] = similar["neighbours"]
    return Trained(
        model,
        task,
        bhash,
        metrics,
        config=cfg,
        similar=similar,
        method_metrics=method_metrics,
        session=session,
        identity=identity,
    )


def _prune_from_library(
    model: nn.Module,
    cfg: TrainConfig,
    task: Task,
    base_hash: str,
    example: torch.Tensor,
    log: Callable[[str], None],
) -> dict:
    """The ``similar`` schedule: embed the task, find its neighbours in
    ``cfg.library``, prune ``model`` once to ``cfg.density`` by their vote.
    Returns the neighbours (task, similarity, weight, plan) and the embedding."""
    if not cfg.library:
        raise ValueError(
            "--schedule similar needs --library DIR (a directory of plans or finished runs)"
        )
    library = load_library(cfg.library)
    embedding = embed_task(cfg, task)
    layers = {
        n: int(m.base_out_channels) for n, m in model.named_modules() if isinstance(m, AdaptedLayer)
    }
    # A plan of this very task (same name) would vote for itself: a new task's
    # neighbours are other tasks.
    near = nearest(
        library,
        embedding,
        cfg.neighbours,
        base_hash=base_hash,
        layers=layers,
        exclude_task=cfg.task,
    )
    if not near:
        raise ValueError(
            f"library {cfg.library} has no plan of another task made with this base "
            f"({base_hash[:12]}) among its {len(library)} plans (plans of {cfg.task} itself "
            "do not vote): train some other tasks first and add their runs"
        )
    w = vote_weights([s for _, s in near])
    log(
        "nearest tasks: "
        + ", ".join(
            f"{p.task} (similarity {s:.4f}, weight {wi:.3f})"
            for (p, s), wi in zip(near, w.tolist())
        )
    )
    votes = {
        n: distributed.agree(v) for n, v in channel_votes(near).items()
    }  # same decision on every rank
    d = density(model)
    if cfg.density < 1.0:
        d = prune_by_votes(
            model, example, votes, cfg.density, block=get_method(cfg.method).prune_block
        )
    log(f"pruned once from the library's vote: density {d:.1%}")
    return {
        "embedding": embedding,
        "neighbours": [
            {"task": p.task, "similarity": s, "weight": wi, "plan": p.source}
            for (p, s), wi in zip(near, w.tolist())
        ],
    }


def run(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    reporter: Reporter | None = None,
    on_model: Callable[[nn.Module], None] | None = None,
    resume: bool = True,
    env: TrainEnv | None = None,
) -> dict:
    """``train_task`` with a checkpoint after every epoch in ``out_dir``, then the
    run directory written; returns the metrics. Under torchrun only rank 0 writes."""
    out = Path(out_dir)
    trained = train_task(cfg, reporter=reporter, checkpoint_dir=out, resume=resume, env=env)
    model, task, metrics, cfg = trained.model, trained.task, trained.metrics, trained.config
    if not distributed.is_main():
        if on_model is not None:
            on_model(model)
        return metrics
    info = {
        **dataclasses.asdict(cfg.options),  # the method's options (a rank, if it has one)
        "density": metrics["density"],
        "test_accuracy": metrics["test_accuracy"],
        "macs": metrics["macs"],
        "learned_parameters": metrics["learned_parameters"],
        "base": cfg.base,
        "base_weights": model.weights_source,
        "criterion": cfg.criterion,
    }
    bundle, _ = serialise(*task_bundle(model, TaskSpec.from_task(task), trained.base_hash, info))
    metrics["task_bundle_bytes"] = len(bundle)
    plan = run_plan(
        model,
        cfg,
        task,
        trained.base_hash,
        metrics,
        embedding=trained.similar["embedding"] if trained.similar else None,
    )
    # task bundle, config, metrics and plan become visible together (spaedge.train.rundir)
    write_run(
        out,
        {
            "task.safetensors": bundle,
            "config.json": json.dumps(cfg.to_json(), indent=2).encode(),
            "metrics.json": json.dumps(metrics, indent=2).encode(),
            "plan.json": plan_bytes(plan),
        },
        identity=trained.identity,
    )
    trained.session.finish()
    if on_model is not None:
        on_model(model)
    return metrics

"""One-shot pruning from similar tasks (after Zhao & Long, arXiv 2307.04365).

A finished ``spaedge train`` run leaves ``plan.json`` in its run directory: the
channels its pruned model kept in every adapted layer (base indices, the same
``out_index`` the task bundle stores) and a *task embedding*. A **library** is
a directory of such plans (``spaedge library add RUN_DIR... --to DIR`` copies
them; a run directory, or a directory of run directories, works as a library
too). For a new task (``spaedge train --schedule similar --library DIR``):

1. **Embedding.** The frozen base (no adapters, its own BatchNorm statistics,
   no head) reads the first ``EMBED_IMAGES`` images of the task's training
   split, unaugmented and in order; each image's penultimate feature vector
   (global-average-pooled last stage) is L2-normalised, and the embedding is
   the mean of these unit vectors. Nothing is trained, so the embedding of a
   task is the same whichever run or method produced its plan.
2. **Similarity.** Cosine between embeddings. Only plans made against the
   same base (content hash) and the same adapted layers qualify; the ``k``
   most similar are the neighbours (``--neighbours``, default 3).
3. **Vote.** Neighbour i gets weight w_i = exp(s_i / T) / sum_j exp(s_j / T)
   over the k neighbours (T = ``TEMPERATURE`` = 0.05), so the weights sum to
   1 and grow with similarity. (Plain w_i proportional to s_i would be nearly
   uniform: the base's features are non-negative after its last ReLU, so the
   cosines of task embeddings all lie in about 0.8-1; at T = 0.05 a cosine
   0.1 higher weighs e^2, about 7.4 times more.) The score of base channel c
   of layer L is sum_i w_i [c kept in L by neighbour i], in [0, 1]: the
   weighted fraction of the similar tasks that kept it.
4. **Prune once.** Channels coupled by a residual add form one dependency
   group (``spaedge.pruning.groups``); a group's channel scores are the mean of
   its producers' votes. All groups are ranked together on the raw vote (it is
   already on one scale, so no per-group normalisation), ties broken by the
   task weight's L1 magnitude (weight ``TIE_BREAK``), and the lowest go until
   the backbone's exact weight count is at the density budget (every group
   keeps at least one channel; block-SPA adapters drop whole blocks). Removal
   is ``remove_channels``: the channels are really gone.
5. **Train a few epochs** (``spaedge.train.run``: the adaptation and final
   epochs run on the already pruned model; there are no recovery steps).

An alternative similarity (not implemented) would compare a few gradient
steps' per-filter Taylor scores of the new task with the library tasks'.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from spaedge.adapters.layers import AdaptedLayer
from spaedge.pruning.groups import ChannelGroup, channel_groups
from spaedge.pruning.prune import _weights, density, ranked_units, remove_positions

__all__ = ["PLAN_FILE", "Plan", "task_embedding", "cosine", "load_library", "nearest", "vote_weights",
           "channel_votes", "group_votes", "prune_by_votes", "plan_of_model", "write_run_plan",
           "plan_from_run", "add_to_library", "prune_from_library", "add_parser"]

PLAN_FILE = "plan.json"
FORMAT = "spaedge-plan"
EMBED_IMAGES = 256
TEMPERATURE = 0.05
TIE_BREAK = 1e-3


@dataclass
class Plan:
    """The pruned shape of one trained task and where it sits among tasks."""

    task: str
    base: str
    base_hash: str
    density: float
    kept: dict[str, list[int]]              # adapted layer -> kept base output channels
    base_channels: dict[str, int]           # adapted layer -> base output channels
    embedding: list[float]
    test_accuracy: Optional[float] = None
    source: str = ""                        # where the plan was read from
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("source")
        return {"format": FORMAT, "version": 1, **d}

    @classmethod
    def from_json(cls, d: dict, source: str = "") -> "Plan":
        if d.get("format") != FORMAT:
            raise ValueError(f"{source or 'plan'}: not a spaedge pruning plan (format {d.get('format')!r})")
        return cls(task=d["task"], base=d.get("base", ""), base_hash=d["base_hash"], density=float(d["density"]),
                   kept={k: [int(i) for i in v] for k, v in d["kept"].items()},
                   base_channels={k: int(v) for k, v in d["base_channels"].items()},
                   embedding=[float(v) for v in d["embedding"]], test_accuracy=d.get("test_accuracy"),
                   source=source, extra=d.get("extra", {}))

    def mask(self, layer: str) -> torch.Tensor:
        m = torch.zeros(self.base_channels[layer])
        m[torch.tensor(self.kept[layer], dtype=torch.long)] = 1.0
        return m


# --------------------------------------------------------------- similarity
@torch.no_grad()
def task_embedding(base: nn.Module, dataset, n_images: int = EMBED_IMAGES, batch_size: int = 128) -> torch.Tensor:
    """Mean of the L2-normalised penultimate features of the frozen ``base``
    over the first ``n_images`` images of ``dataset`` (in order, unaugmented)."""
    was_training = base.training
    base.eval()
    n = min(n_images, len(dataset))
    total = None
    try:
        for start in range(0, n, batch_size):
            x, _ = dataset.batch(range(start, min(n, start + batch_size)))
            f = nn.functional.normalize(base.features(x).double(), dim=1).sum(0)
            total = f if total is None else total + f
    finally:
        base.train(was_training)
    if total is None:
        raise ValueError("cannot embed a task with no training images")
    return (total / n).float()


def cosine(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"task embeddings of different sizes ({a.numel()} vs {b.numel()}): other base?")
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def nearest(library: Iterable[Plan], embedding, k: int = 3, base_hash: Optional[str] = None,
            layers: Optional[dict[str, int]] = None, exclude_task: Optional[str] = None) -> list[tuple[Plan, float]]:
    """The ``k`` plans most similar to ``embedding`` (cosine), best first. Plans of
    another base, other adapted layers or (``exclude_task``) the same task name
    are left out."""
    scored = []
    for p in library:
        if base_hash is not None and p.base_hash != base_hash:
            continue
        if layers is not None and p.base_channels != layers:
            continue
        if exclude_task is not None and p.task == exclude_task:
            continue
        scored.append((p, cosine(embedding, p.embedding)))
    scored.sort(key=lambda ps: (-ps[1], ps[0].task, ps[0].source))
    return scored[:max(k, 0)]


def vote_weights(similarities: Sequence[float], temperature: float = TEMPERATURE) -> torch.Tensor:
    """w_i = exp(s_i / T) / sum_j exp(s_j / T): positive, summing to 1, larger for
    more similar tasks (T = inf gives equal weights)."""
    s = torch.as_tensor(list(similarities), dtype=torch.float64)
    if len(s) == 0:
        raise ValueError("no neighbours to vote")
    if math.isinf(temperature):
        return torch.full_like(s, 1.0 / len(s))
    return torch.softmax(s / temperature, dim=0)


def channel_votes(neighbours: Sequence[tuple[Plan, float]]) -> dict[str, torch.Tensor]:
    """Per adapted layer, sum_i w_i * kept-mask_i over the base's output channels."""
    w = vote_weights([s for _, s in neighbours])
    layers = neighbours[0][0].base_channels
    votes = {name: torch.zeros(n, dtype=torch.float64) for name, n in layers.items()}
    for (plan, _), wi in zip(neighbours, w):
        for name in votes:
            votes[name] += wi * plan.mask(name).double()
    return votes


def group_votes(model: nn.Module, group: ChannelGroup, votes: dict[str, torch.Tensor]) -> torch.Tensor:
    """A group's channel scores: the mean of its producers' votes at the channels they still have."""
    s = torch.zeros(group.size, dtype=torch.float64)
    for name in group.producers:
        layer = model.get_submodule(name)
        s += votes[name][layer.out_index]
    return s / max(len(group.producers), 1)


def _magnitude(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    s = torch.zeros(group.size, dtype=torch.float64)
    with torch.no_grad():
        for name in group.producers:
            w = model.get_submodule(name).task_weight()
            s += w.abs().reshape(w.shape[0], -1).mean(1).double()
    return s / max(float(s.max()), 1e-30)


def prune_by_votes(model: nn.Module, example_input: torch.Tensor, votes: dict[str, torch.Tensor],
                   target: float, *, min_channels: int = 1, block: int = 1,
                   tie_break: float = TIE_BREAK) -> float:
    """Remove the lowest-voted channels (globally ranked, per dependency group)
    until the backbone holds at most ``target`` of the base's weights; the
    weight count is exact (each layer's kept outputs x kept inputs). Returns
    the density reached."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {target}")
    groups = channel_groups(model, example_input)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    out_group: dict[str, int] = {}
    in_group: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for n in g.producers:
            out_group[n] = gi
        for n in g.consumers:
            if n in layers:
                in_group[n] = gi
    count = [g.size for g in groups]
    base_total = sum(_weights(m, base=True) for m in layers.values())

    def layer_weights() -> int:
        total = 0
        for name, m in layers.items():
            o = count[out_group[name]] if name in out_group else m.out_channels
            i = count[in_group[name]] if name in in_group else m.in_channels
            total += o * i * m.kernel_size[0] * m.kernel_size[1]
        return total

    scores = [group_votes(model, g, votes) + tie_break * _magnitude(model, g) for g in groups]
    candidates = ranked_units(model, groups, scores, block=block, min_channels=min_channels)
    drop: dict[int, list[int]] = {}
    current = layer_weights()
    for _, gi, positions in candidates:
        if current <= target * base_total + 1e-9:
            break
        drop.setdefault(gi, []).extend(positions)
        count[gi] -= len(positions)
        current = layer_weights()
    remove_positions(model, groups, drop)
    return density(model)


# ------------------------------------------------------------------ plans
def plan_of_model(model: nn.Module, *, task: str, base: str, base_hash: str, embedding,
                  test_accuracy: Optional[float] = None, extra: Optional[dict] = None) -> Plan:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    return Plan(task=task, base=base, base_hash=base_hash, density=density(model),
                kept={n: sorted(int(i) for i in m.out_index) for n, m in layers.items()},
                base_channels={n: int(m.base_out_channels) for n, m in layers.items()},
                embedding=[float(v) for v in torch.as_tensor(embedding)], test_accuracy=test_accuracy,
                extra=extra or {})


def write_plan(plan: Plan, path: Path) -> None:
    from spaedge.pack.format import atomic_write_bytes
    atomic_write_bytes(path, json.dumps(plan.to_json()).encode())


def read_plan(path: Path) -> Plan:
    return Plan.from_json(json.loads(Path(path).read_text()), source=str(path))


def embed_config_task(cfg, task=None) -> torch.Tensor:
    """The embedding of a TrainConfig's task under its base."""
    from spaedge.models import get_base
    from spaedge.tasks import get_task

    base = get_base(cfg.base, cfg.base_weights)
    if task is None:
        task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=None)
        if task.input_size[0] != base.in_channels:
            task = get_task(cfg.task, data_dir=cfg.data_dir, input_size=(base.in_channels, *task.input_size[1:]))
    return task_embedding(base, task.split("train"))


def write_run_plan(out: Path, model: nn.Module, cfg, task, base_hash: str, metrics: dict,
                   embedding: Optional[torch.Tensor] = None) -> None:
    """``out/plan.json`` for a finished run (called by ``spaedge.train.run``)."""
    if embedding is None:
        embedding = embed_config_task(cfg, task)
    p = plan_of_model(model, task=task.name, base=cfg.base, base_hash=base_hash, embedding=embedding,
                      test_accuracy=metrics.get("test_accuracy"),
                      extra={"method": cfg.method, "schedule": cfg.schedule, "criterion": cfg.criterion,
                             "seed": cfg.seed})
    write_plan(p, Path(out) / PLAN_FILE)


def plan_from_run(run_dir: Path) -> Plan:
    """A run directory's plan: its ``plan.json``, or (runs made before plans
    existed) rebuilt from ``task.safetensors`` and ``config.json``."""
    run_dir = Path(run_dir)
    if (run_dir / PLAN_FILE).exists():
        return read_plan(run_dir / PLAN_FILE)
    bundle, config = run_dir / "task.safetensors", run_dir / "config.json"
    if not (bundle.exists() and config.exists()):
        raise FileNotFoundError(f"{run_dir}: no {PLAN_FILE}, and no task.safetensors + config.json to rebuild it "
                                "from: is it a finished `spaedge train` run directory?")
    from spaedge.models import get_base
    from spaedge.pack.format import read_bundle
    from spaedge.train import TrainConfig

    cfg = TrainConfig.from_json(json.loads(config.read_text()))
    tensors, meta = read_bundle(bundle)
    base = get_base(cfg.base, cfg.base_weights)
    layers = {n: m for n, m in base.named_modules() if isinstance(m, nn.Conv2d)}
    kept, chans, weights, base_w = {}, {}, 0, 0
    for name, conv in layers.items():
        o, i, kh, kw = conv.weight.shape
        out_idx = tensors.get(f"{name}.out_index")
        in_idx = tensors.get(f"{name}.in_index")
        kept[name] = sorted(int(v) for v in (out_idx if out_idx is not None else range(o)))
        chans[name] = int(o)
        weights += len(kept[name]) * (len(in_idx) if in_idx is not None else i) * kh * kw
        base_w += o * i * kh * kw
    info = json.loads(meta.get("info", "{}"))
    return Plan(task=meta["task"], base=cfg.base, base_hash=meta["base_hash"], density=weights / max(base_w, 1),
                kept=kept, base_channels=chans, embedding=embed_config_task(cfg).tolist(),
                test_accuracy=info.get("test_accuracy"), source=str(run_dir),
                extra={"method": cfg.method, "seed": cfg.seed})


def _plan_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / PLAN_FILE).exists():
        return [path / PLAN_FILE]
    files = sorted(p for p in path.glob("*.json"))
    files += sorted(p for p in path.glob(f"*/{PLAN_FILE}"))
    return files


def load_library(paths: str | Path | Sequence[str | Path]) -> list[Plan]:
    """Every plan under ``paths``: plan files, library directories of plans,
    run directories, or directories of run directories. ``paths`` may be one
    string with several entries separated by commas."""
    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p]
    plans = []
    for entry in paths:
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"library {path} does not exist")
        for f in _plan_files(path):
            try:
                d = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(d, dict) and d.get("format") == FORMAT:
                plans.append(Plan.from_json(d, source=str(f)))
    return plans


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


def add_to_library(run_dir: Path, library: Path) -> Path:
    """Copy (or rebuild) a run's plan into the library directory; returns the file."""
    plan = plan_from_run(Path(run_dir))
    library = Path(library)
    library.mkdir(parents=True, exist_ok=True)
    seed = plan.extra.get("seed", 0)
    dest = library / f"{_safe(plan.task)}__{plan.base_hash[:8]}__d{round(plan.density * 100)}__s{seed}.json"
    if (Path(run_dir) / PLAN_FILE).exists():
        shutil.copyfile(Path(run_dir) / PLAN_FILE, dest)
    else:
        write_plan(plan, dest)
    return dest


# -------------------------------------------------------- train integration
def prune_from_library(model: nn.Module, cfg, task, base_hash: str, example: torch.Tensor,
                       log=lambda msg: None) -> dict:
    """The ``similar`` schedule of ``spaedge.train.run``: embed the task, find its
    neighbours in ``cfg.library``, prune ``model`` once to ``cfg.density`` by
    their vote. Returns what was done (neighbours, weights, embedding)."""
    from spaedge import distributed
    from spaedge.adapters import prune_block

    if not cfg.library:
        raise ValueError("--schedule similar needs --library DIR (a directory of plans or finished runs)")
    library = load_library(cfg.library)
    embedding = embed_config_task(cfg, task)
    layers = {n: int(m.base_out_channels) for n, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    near = nearest(library, embedding, cfg.neighbours, base_hash=base_hash, layers=layers)
    if not near:
        raise ValueError(f"library {cfg.library} has no plan made with this base ({base_hash[:12]}) "
                         f"among its {len(library)} plans: train some tasks first and add their runs")
    w = vote_weights([s for _, s in near])
    log("nearest tasks: " + ", ".join(f"{p.task} (similarity {s:.4f}, weight {wi:.3f})"
                                      for (p, s), wi in zip(near, w.tolist())))
    votes = {n: distributed.agree(v) for n, v in channel_votes(near).items()}  # same decision on every rank
    d = density(model)
    if cfg.density < 1.0:
        d = prune_by_votes(model, example, votes, cfg.density, block=prune_block(model))
    log(f"pruned once from the library's vote: density {d:.1%}")
    return {"embedding": embedding, "neighbours": [{"task": p.task, "similarity": s, "weight": wi, "plan": p.source}
                                                   for (p, s), wi in zip(near, w.tolist())]}


# ---------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    lib = sub.add_parser(
        "library", help="libraries of pruned task plans (for --schedule similar)",
        description="A library is a directory of pruning plans, one JSON per finished task: the channels its "
                    "pruned model kept in every layer and its task embedding (mean of the frozen base's "
                    "normalised penultimate features over the first 256 training images). Every `spaedge "
                    "train` run writes RUN_DIR/plan.json; `spaedge train --schedule similar --library DIR` prunes "
                    "a new task once by the similarity-weighted vote of its --neighbours nearest plans (cosine "
                    "of embeddings; weights softmax(cosine / 0.05)), then trains its epochs. Plans of runs pruned "
                    "with --criterion taylor transfer much better than magnitude ones (docs/results.md). --library also accepts run directories or a directory of runs directly.")
    s = lib.add_subparsers(dest="library_command", metavar="ACTION")
    a = s.add_parser("add", help="add finished runs' plans to a library directory",
                     description="Copy RUN_DIR/plan.json (or rebuild it from task.safetensors + config.json for "
                                 "runs made before plans existed) into the library directory.")
    a.add_argument("runs", nargs="+", metavar="RUN_DIR")
    a.add_argument("--to", required=True, metavar="DIR", help="library directory (created if missing)")
    a.set_defaults(func=_cmd_add)
    ls = s.add_parser("list", help="the plans of a library, optionally ranked for a task",
                      description="List a library's plans; with --task, ranked by similarity to that task.")
    ls.add_argument("library", metavar="DIR")
    ls.add_argument("--task", help="rank the plans by cosine similarity to this task's embedding")
    ls.add_argument("--base", default="tiny")
    ls.add_argument("--base-weights")
    ls.add_argument("--data-dir")
    ls.set_defaults(func=_cmd_list)
    lib.set_defaults(func=lambda args: (lib.print_help(), 2)[1])


def _cmd_add(args) -> int:
    for r in args.runs:
        dest = add_to_library(Path(r), Path(args.to))
        p = read_plan(dest)
        print(f"added {p.task} (density {p.density:.1%}, base {p.base_hash[:12]}) -> {dest}")
    return 0


def _cmd_list(args) -> int:
    plans = load_library(args.library)
    if not plans:
        print(f"{args.library}: no plans")
        return 0
    if args.task:
        from spaedge.models import get_base
        from spaedge.pack.bundle import base_hash
        from spaedge.train import TrainConfig

        cfg = TrainConfig(task=args.task, base=args.base, base_weights=args.base_weights, data_dir=args.data_dir)
        emb = embed_config_task(cfg)
        bh = base_hash(get_base(args.base, args.base_weights))
        for p, s in nearest(plans, emb, len(plans), base_hash=bh):
            print(f"  {s:.4f}  {p.task:<24} density {p.density:.1%}  {p.source}")
        return 0
    for p in plans:
        acc = f", test accuracy {p.test_accuracy:.2%}" if p.test_accuracy is not None else ""
        print(f"  {p.task:<24} density {p.density:.1%}{acc}, base {p.base_hash[:12]}  {p.source}")
    return 0

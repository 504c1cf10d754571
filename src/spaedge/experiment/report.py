"""The experiment's report: the table (test accuracy at the rate chosen on
validation, mean ± std over the reported seeds, with a binomial interval for
the finite test set), paired differences across seeds, the per-seed CSVs
behind it, the Pareto plots (accuracy against task-bundle bytes and against
MACs, with error bars) and the training curves (mean ± band over seeds)."""

from __future__ import annotations

import csv
import math
import re
import statistics
from pathlib import Path

from spaedge.experiment.grid import DEFAULT_TASKS, Budget
from spaedge.experiment.run import chosen_rates, reported_seeds

__all__ = [
    "reported",
    "report",
    "wilson_interval",
    "paired_difference",
    "binomial_se_difference",
    "verdict",
    "flatness",
]

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) for a proportion ``p``
    measured on ``n`` independent items, e.g. a test accuracy on n images."""
    if n < 1:
        raise ValueError(f"a binomial interval needs at least one item, got n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a proportion must be in [0, 1], got {p}")
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean and standard error of a - b over the seeds both have ({seed: value}):
    (mean of d, stdev(d) / sqrt(n), n) with d the per-seed differences. Pairing
    removes what the two share per seed (the data order, the initialisation)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(
            f"a paired difference needs at least 2 common seeds, got {len(seeds)} ({seeds})"
        )
    d = [a[s] - b[s] for s in seeds]
    return statistics.mean(d), statistics.stdev(d) / math.sqrt(len(d)), len(d)


def binomial_se_difference(p1: float, p2: float, n: int) -> float:
    """Standard error, from the finite test set alone, of the difference of two
    accuracies each measured on n images, treated as independent (an upper
    bound: both methods see the same images, whose errors correlate)."""
    if n < 1:
        raise ValueError(f"a binomial standard error needs at least one item, got n={n}")
    return math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)


def verdict(diff: float, se_seeds: float, se_test: float) -> str:
    """'outside noise' when |diff| exceeds twice the combined standard error
    sqrt(se_seeds² + se_test²) (seeds: training randomness; test: the finite
    test set), else 'within noise'."""
    return "outside noise" if abs(diff) > 2 * math.hypot(se_seeds, se_test) else "within noise"


def reported(results: list[dict], budget: Budget) -> list[dict]:
    """The runs the table reports: each cell's runs at its chosen rate, on the
    reported seeds (not the selection seed when the budget holds it out)."""
    rates = chosen_rates(results, budget)
    seeds = set(reported_seeds(budget))
    return [
        r
        for r in results
        if r["config_key"] in rates
        and r["seed"] in seeds
        and float(r["lr"]) == float(rates[r["config_key"]])
        and not r.get("diverged")
    ]


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    m = statistics.mean(values) * 100
    if len(values) < 2:
        return f"{m:.1f}"  # one seed: no spread to show
    return f"{m:.1f} ± {statistics.stdev(values) * 100:.1f}"


def _diverged(results: list[dict]) -> str:
    bad = sorted({(r["label"], f"{float(r['lr']):g}") for r in results if r.get("diverged")})
    if not bad:
        return ""
    return (
        "\n## Rates that diverged\n\nThese (method, rate) pairs stopped on a non-finite loss in at least one "
        "cell; the rate search passed over them:\n\n"
        + "\n".join(f"- {m} at {lr}" for m, lr in bad)
        + "\n"
    )


def _rows(runs: list[dict]) -> dict[tuple, list[dict]]:
    rows: dict[tuple, list[dict]] = {}
    for r in runs:
        rows.setdefault((r.get("base", ""), r["density"], r["label"]), []).append(r)
    return rows


def count_test_images(task: str, budget: Budget, data_dir: str | None = None) -> int:
    """How many test images a run of ``task`` under ``budget`` is scored on."""
    from spaedge.tasks import get_task

    return min(len(get_task(task, data_dir=data_dir).split("test")), budget.test_limit)


def _reference(labels: list[str], accs: dict[str, dict[int, float]]) -> str:
    """The row every other is compared with: fine-pruning (magnitude) when the
    panel has it (the SPA paper's baseline), else the best mean."""
    for lab in labels:
        if lab.startswith("Fine-pruning") and "(magnitude)" in lab:
            return lab
    return max(labels, key=lambda k: statistics.mean(accs[k].values()))


def _controls(label: str, labels: list[str]) -> list[str]:
    """Rows a row is also compared with, when the panel has them: a SparseAdapter
    row against its dense control (the same adapter at sparsity 0, the same
    initialisation), and that control against SPLoRA (B = 0 at initialisation),
    so sparsity and initialisation are told apart."""
    m = re.fullmatch(r"(.+), sparsity ([0-9.]+) \((.+?)(?:; \w+ mask)?\)", label)
    if not m:
        return []
    family, sparsity, how = m.groups()
    if float(sparsity) > 0:
        want = f"{family}, sparsity 0.0 ({how})"
    else:
        want = f"{family.removeprefix('SparseAdapter ')} ({how})"
    return [want] if want in labels and want != label else []


def paired_rows(
    rows: dict[tuple, list[dict]], tasks: list[str], n_test: dict[str, int]
) -> list[dict]:
    """Per base, density and task: every row against the reference row (and its
    controls, ``_controls``), paired by seed; the test-set standard error of
    the gap; the verdict."""
    out = []
    for base, dens in sorted({(k[0], k[1]) for k in rows}, key=lambda k: (k[0], -k[1])):
        for t in tasks:
            accs = {
                k[2]: {r["seed"]: r["test_accuracy"] for r in rs if r["task"] == t}
                for k, rs in rows.items()
                if k[:2] == (base, dens)
            }
            accs = {k: v for k, v in accs.items() if len(v) >= 2}
            if len(accs) < 2:
                continue
            labels = sorted(accs)
            ref = _reference(labels, accs)
            pairs = [(lab, ref) for lab in labels if lab != ref]
            pairs += [(lab, c) for lab in labels for c in _controls(lab, labels) if c != ref]
            for lab, against in pairs:
                try:
                    d, se, n = paired_difference(accs[lab], accs[against])
                except ValueError:
                    continue  # fewer than 2 seeds in common: nothing to pair
                p1 = statistics.mean(accs[lab].values())
                p2 = statistics.mean(accs[against].values())
                se_t = binomial_se_difference(p1, p2, n_test[t])
                out.append(
                    {
                        "base": base,
                        "density": dens,
                        "task": t,
                        "row": lab,
                        "reference": against,
                        "seeds": n,
                        "diff": d * 100,
                        "se_seeds": se * 100,
                        "se_test": se_t * 100,
                        "verdict": verdict(d, se, se_t),
                    }
                )
    return out


def flatness(curve: list[dict], window: int = 5) -> float | None:
    """How much the validation accuracy still climbs at the end of a run: the
    mean over the last ``window`` epochs minus the mean over the ``window``
    before them (None when the run is shorter than 2 windows)."""
    acc = [h["val_accuracy"] for h in curve]
    if len(acc) < 2 * window:
        return None
    return statistics.mean(acc[-window:]) - statistics.mean(acc[-2 * window : -window])


def _flat_lines(rows: dict[tuple, list[dict]], order: list[tuple]) -> list[str]:
    lines = []
    for key in order:
        d = [f for f in (flatness(r.get("curve") or []) for r in rows[key]) if f is not None]
        if d:
            lines.append(
                f"- {key[0]} {key[1]:.0%}, {key[2]}: {_ms(d)} points "
                f"(per seed: {', '.join(f'{v * 100:+.1f}' for v in d)})"
            )
    return lines


def _search_lines(results: list[dict], budget: Budget) -> list[str]:
    """The rate search behind the table: seed 0's validation accuracy at every
    rate, the chosen one starred, flagged when it is an edge of the grid (a
    wider grid might choose another), and cells whose search or seeds are
    unfinished."""
    from spaedge.experiment.run import SELECTION_SEED

    rates = chosen_rates(results, budget)
    lrs = sorted(float(lr) for lr in budget.lrs)
    by: dict[str, dict] = {}
    for r in results:
        e = by.setdefault(r["config_key"], {"r": r, "val": {}, "seeds": set()})
        if r["seed"] == SELECTION_SEED and r.get("lr") is not None:
            e["val"][float(r["lr"])] = (r["val_accuracy"], bool(r.get("diverged")))
        if r["config_key"] in rates and float(r["lr"]) == float(rates[r["config_key"]]):
            e["seeds"].add(r["seed"])
    head = ["base", "density", "method (criterion)"] + [f"{lr:g}" for lr in lrs]
    head += ["chosen", "reported seeds done"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    want = set(reported_seeds(budget))
    for key in sorted(by, key=lambda k: (by[k]["r"].get("base", ""), -by[k]["r"]["density"], k)):
        e, r = by[key], by[key]["r"]
        cells = []
        for lr in lrs:
            if lr not in e["val"]:
                cells.append("…")
                continue
            v, bad = e["val"][lr]
            mark = "*" if key in rates and float(rates[key]) == lr else ""
            cells.append("diverged" if bad else f"{v * 100:.1f}{mark}")
        if key in rates:
            lr = float(rates[key])
            edge = (
                " (the only rate: not searched)"
                if len(lrs) == 1
                else " (lowest: edge)"
                if lr == lrs[0]
                else " (highest: edge)"
                if lr == lrs[-1]
                else ""
            )
            chosen = f"{lr:g}{edge}"
        else:
            chosen = "search unfinished"
        done = f"{len(e['seeds'] & want)}/{len(want)}"
        lines.append(
            "| "
            + " | ".join(
                [r.get("base", ""), f"{r['density']:.0%}", r["label"], *cells, chosen, done]
            )
            + " |"
        )
    return lines


def _sentence(p: dict) -> str:
    ahead, behind = (p["row"], p["reference"]) if p["diff"] > 0 else (p["reference"], p["row"])
    return (
        f"at {p['density']:.0%} on {p['base']} ({p['task']}), {ahead} is ahead of {behind} by "
        f"{abs(p['diff']):.1f} points, {p['verdict']} (paired over {p['seeds']} seeds: "
        f"{p['diff']:+.1f} ± {p['se_seeds']:.1f} SE; test-set SE {p['se_test']:.1f})"
    )


def report(
    results: list[dict],
    out_dir: str | Path,
    budget: Budget,
    command: str = "",
    data_dir: str | None = None,
) -> str:
    """Write results.md, results.csv (every run), curves.csv (every run's
    validation accuracy per epoch), results.png and curves.png; return the table."""
    out = Path(out_dir)
    runs = reported(results, budget)
    tasks = sorted({r["task"] for r in runs}, key=lambda t: (DEFAULT_TASKS + (t,)).index(t))
    n_test = {t: count_test_images(t, budget, data_dir) for t in {r["task"] for r in results}}
    rows = _rows(runs)
    order = sorted(rows, key=lambda k: (k[0], -k[1], k[2]))
    head = (
        ["base", "density", "method (criterion)", "seeds"]
        + [f"{t} (95% test CI)" for t in tasks]
        + ["avg", "learned params", "task bundle KB", "MMACs", "shared adapters", "rate(s)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary = []
    for key in order:
        rs = rows[key]
        per_task = [[r["test_accuracy"] for r in rs if r["task"] == t] for t in tasks]
        cells = []
        for t, v in zip(tasks, per_task):
            if not v:
                cells.append("–")
                continue
            lo, hi = wilson_interval(statistics.mean(v), n_test[t])
            cells.append(f"{_ms(v)} ({lo * 100:.1f}–{hi * 100:.1f})")
        means = [statistics.mean(v) for v in per_task if v]
        avg = statistics.mean(means) * 100 if means else float("nan")
        sd = (
            statistics.mean(statistics.stdev(v) for v in per_task if len(v) > 1) * 100
            if any(len(v) > 1 for v in per_task)
            else 0.0
        )
        lp = statistics.mean(r["learned_parameters"] for r in rs)
        kb = statistics.mean(r["task_bundle_bytes"] for r in rs) / 1024
        macs = statistics.mean(r["macs"] for r in rs) / 1e6
        shared = (
            "/".join(str(r["pear_shared"]) for r in sorted(rs, key=lambda r: r["seed"]))
            if all("pear_shared" in r for r in rs)
            else "–"
        )
        rates = "/".join(sorted({f"{float(r['lr']):g}" for r in rs}))
        lines.append(
            "| "
            + " | ".join(
                [key[0], f"{key[1]:.0%}", key[2], str(len({r["seed"] for r in rs}))]
                + cells
                + [f"{avg:.1f}", f"{lp / 1e3:.1f}k", f"{kb:.1f}", f"{macs:.2f}", shared, rates]
            )
            + " |"
        )
        summary.append(
            {
                "base": key[0],
                "density": key[1],
                "label": key[2],
                "avg": avg,
                "sd": sd,
                "kb": kb,
                "macs": macs,
                "params": lp,
            }
        )
    table = "\n".join(lines)
    by_compute = _compute_lines(summary)
    seeds = sorted({r["seed"] for r in runs})
    pairs = paired_rows(rows, tasks, n_test)
    compute = sum(r["seconds"] for r in results)
    wall = f" Compute: {compute / 3600:.2f} core-hours over {len(results)} runs (rate search included)."
    ptable = [
        "| base | density | task | row | against | seeds | difference (points) | SE seeds | SE test set | |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ] + [
        f"| {p['base']} | {p['density']:.0%} | {p['task']} | {p['row']} | {p['reference']} | {p['seeds']} "
        f"| {p['diff']:+.1f} | {p['se_seeds']:.1f} | {p['se_test']:.1f} | {p['verdict']} |"
        for p in pairs
    ]
    md = (
        f"# spaedge experiment\n\n{command}\n\nBudget: {budget.describe()}.{wall}\n\n"
        f"Test accuracy (%) mean ± std over seeds {seeds} at the learning rate chosen on validation "
        f"(seed 0's runs, {'not reported' if budget.held_out_selection else 'reported'}); in brackets the "
        "95% Wilson interval of that mean for the test set's size "
        f"({', '.join(f'{t}: {n_test[t]} images' for t in tasks)}). Learned params, bundle size and "
        "MACs averaged over tasks and seeds; shared adapters per seed (Pear).\n\n"
        f"{table}\n\n"
        "## By compute\n\nEvery row of the table sorted by the MACs its pruned network "
        "keeps (equal density is not equal compute: criteria and methods keep different "
        "channels): compare rows at similar MMACs.\n\n"
        + "\n".join(by_compute)
        + "\n\n## Paired differences\n\nEach row against fine-pruning (magnitude) at its density, or the best "
        "row where there is none (and each SparseAdapter row against its dense control at sparsity "
        "0, that control against SPLoRA): the per-seed difference of test accuracy, its mean and standard "
        "error (stdev/sqrt(n)) over the seeds both have; the test set's own standard error of the gap "
        "(independent binomials, an upper bound); outside noise when the gap exceeds twice "
        "sqrt(SE seeds² + SE test set²).\n\n"
        + "\n".join(ptable)
        + "\n\n"
        + "\n".join(f"- {_sentence(p)}." for p in pairs)
        + "\n\n## Rate search\n\nSeed 0's validation accuracy (%) at every rate; * the chosen "
        "rate (ties to the lower).\n\n"
        + "\n".join(_search_lines(results, budget))
        + "\n\n## Are the curves flat?\n\nValidation accuracy, mean of the last 5 epochs minus the "
        "mean of the 5 before them (points; mean ± std over the reported seeds): near 0 when the "
        "run has stopped learning.\n\n"
        + "\n".join(_flat_lines(rows, order))
        + "\n"
        + _diverged(results)
    )
    (out / "results.md").write_text(md)
    _write_csvs(results, runs, out, n_test)
    _plots(summary, runs, out)
    return table


def _compute_lines(summary: list[dict]) -> list[str]:
    """The table's rows by MMACs (per base, fewest first), with accuracy and parameters."""
    lines = [
        "| base | MMACs | density | method (criterion) | avg test accuracy (%) | learned params |",
        "|---|---|---|---|---|---|",
    ]
    for s in sorted(summary, key=lambda s: (s["base"], s["macs"], -s["density"], s["label"])):
        lines.append(
            f"| {s['base']} | {s['macs']:.2f} | {s['density']:.0%} | {s['label']} "
            f"| {s['avg']:.1f} ± {s['sd']:.1f} | {s['params'] / 1e3:.1f}k |"
        )
    return lines


RUN_FIELDS = [
    "base",
    "task",
    "method",
    "options",
    "rank",
    "density",
    "criterion",
    "schedule",
    "seed",
    "lr",
    "reported",
    "val_accuracy",
    "test_accuracy",
    "test_images",
    "density_reached",
    "learned_parameters",
    "task_bundle_bytes",
    "macs",
    "macs_unpruned",
    "pear_pruned",
    "pear_shared",
    "pear_removed",
    "diverged",
    "seconds",
]


def _write_csvs(results: list[dict], runs: list[dict], out: Path, n_test: dict[str, int]) -> None:
    shown = {r["key"] for r in runs}
    ordered = sorted(results, key=lambda r: (r["config_key"], float(r["lr"] or 0), r["seed"]))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in ordered:
            w.writerow(
                {
                    **r,
                    "options": ";".join(f"{k}={v}" for k, v in r.get("options") or ()),
                    "reported": int(r["key"] in shown),
                    "test_images": n_test.get(r["task"], ""),
                    "diverged": "1" if r.get("diverged") else "",
                }
            )
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["key", "task", "label", "density", "seed", "lr", "reported", "epoch", "phase", "step"]
            + ["loss", "val_accuracy"]
        )
        for r in ordered:
            for i, h in enumerate(r.get("curve") or [], 1):
                w.writerow(
                    [r["key"], r["task"], r["label"], r["density"], r["seed"], r["lr"]]
                    + [int(r["key"] in shown), i, h.get("phase"), h.get("step")]
                    + [f"{h.get('loss', float('nan')):.4f}", f"{h['val_accuracy']:.4f}"]
                )


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both cost (lower) and accuracy (higher), by cost."""
    front, best = [], -math.inf
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    return front


# One marker per criterion / schedule; one colour per method (distinct hues,
# no pale/dark pairs).
MARKERS = {
    "magnitude": "o",
    "lrp": "s",
    "taylor": "^",
    "gradient": "v",
    "oneshot": "D",
    "similar": "P",
}
COLOURS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
    "#000000",
    "#0b3d91",
    "#a6761d",
    "#66a61e",
]


def _short_number(v: float, _pos=None) -> str:
    """A tick label: 20k, 1.5M, 30."""
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def _family(label: str) -> str:
    return label.split(" (")[0]


def _variant(label: str) -> str:
    """The criterion and schedule of a row's label: 'magnitude', 'lrp', 'magnitude, oneshot'."""
    return label.rsplit(" (", 1)[-1].rstrip(")")


LINESTYLES = {
    "magnitude": "-",
    "lrp": "--",
    "taylor": "-.",
    "gradient": ":",
    "oneshot": (0, (6, 2, 1, 2)),
}


# SparseAdapter's mask criteria (a variant "magnitude; grasp mask"): markers of their own.
MASK_MARKERS = {
    "snip": "*",
    "magnitude": "h",
    "random": "X",
    "grasp": "<",
    "synflow": ">",
}


def _linestyle(variant: str):
    crit, _, sched = variant.split("; ")[0].partition(", ")
    return LINESTYLES.get(sched) or LINESTYLES.get(crit, "-")


def _marker(variant: str) -> str:
    pruning, _, mask = variant.partition("; ")
    if mask:
        return MASK_MARKERS.get(mask.removesuffix(" mask"), "P")
    crit, _, sched = pruning.partition(", ")
    return MARKERS.get(sched) or MARKERS.get(crit, "X")


def _style(labels: list[str]) -> tuple[dict, dict]:
    families = sorted({_family(lab) for lab in labels})
    colours = {f: COLOURS[i % len(COLOURS)] for i, f in enumerate(families)}
    variants = sorted({_variant(lab) for lab in labels})
    return colours, {v: _marker(v) for v in variants}


def _legend(fig, ax, colours: dict, markers: dict) -> None:
    """Methods by colour and criteria/schedules by marker, outside the axes."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", ls="-", label=f) for f, c in colours.items()]
    handles += [
        Line2D([], [], color="0.3", marker=m, ls=_linestyle(v), label=v) for v, m in markers.items()
    ]
    ax.legend(
        handles=handles,
        fontsize=9,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        title="colour: method;\nmarker/line: criterion",
        title_fontsize=9,
        frameon=False,
    )


def _plots(summary: list[dict], runs: list[dict], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
    except ImportError:  # matplotlib is optional: table and CSV are written without it
        return
    if not summary:
        return
    colours, markers = _style([s["label"] for s in summary])
    panels = sorted({(s["base"], s["density"]) for s in summary}, key=lambda k: (k[0], -k[1]))
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 3.9 * len(panels)), squeeze=False)
    for row, (base, dens) in enumerate(panels):
        pts = [s for s in summary if (s["base"], s["density"]) == (base, dens)]
        for col, (cost, name) in enumerate(
            (
                ("params", "learned parameters (log scale)"),
                ("macs", "MMACs per image, pruned network"),
            )
        ):
            ax = axes[row][col]
            for s in pts:
                ax.errorbar(
                    s[cost],
                    s["avg"],
                    yerr=s["sd"],
                    marker=markers[_variant(s["label"])],
                    color=colours[_family(s["label"])],
                    ms=7,
                    capsize=3,
                    ls="",
                )
            front = _pareto([(s[cost], s["avg"]) for s in pts if not math.isnan(s["avg"])])
            ax.plot(
                [p[0] for p in front], [p[1] for p in front], "k--", lw=0.8, label="Pareto front"
            )
            if cost == "params":  # spans decades (adapters to fine-pruning)
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(_short_number))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(name, fontsize=9)
            ax.set_ylabel("test accuracy (%), mean ± std over seeds", fontsize=9)
            ax.set_title(
                f"{base}, {dens:.0%} density: accuracy vs {name.split(' (')[0]}", fontsize=10
            )
            ax.grid(alpha=0.3)
        _legend(fig, axes[row][1], colours, markers)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)
    plt.close(fig)

    # Training curves: validation accuracy after every epoch at the chosen rate,
    # mean over the reported seeds with a min-max band; one panel per base, task
    # and density; the shaded span is the pruning phase (recovery epochs).
    curves = [r for r in runs if r.get("curve")]
    keys = sorted(
        {(r.get("base", ""), r["task"], r["density"]) for r in curves},
        key=lambda k: (k[0], k[1], -k[2]),
    )
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys) + 3.2, 4.2), squeeze=False)
    for ax, (base, task, density) in zip(axes[0], keys):
        here = [
            c
            for c in curves
            if (c.get("base", ""), c["task"], c["density"]) == (base, task, density)
        ]
        span = None
        for label in sorted({c["label"] for c in here}):
            rs = [c for c in here if c["label"] == label]
            n = min(len(c["curve"]) for c in rs)
            acc = [[c["curve"][i]["val_accuracy"] * 100 for c in rs] for i in range(n)]
            mean = [statistics.mean(a) for a in acc]
            x = list(range(1, n + 1))
            col = colours[_family(label)]
            ax.plot(
                x,
                mean,
                color=col,
                marker=markers[_variant(label)],
                ls=_linestyle(_variant(label)),
                ms=5,
                lw=1.4,
            )
            ax.fill_between(x, [min(a) for a in acc], [max(a) for a in acc], color=col, alpha=0.15)
            phases = [h.get("phase") for h in rs[0]["curve"]]
            if "recover" in phases and span is None:
                first = phases.index("recover")
                last = len(phases) - 1 - phases[::-1].index("recover")
                span = (first + 0.5, last + 1.5)
        if span:
            ax.axvspan(*span, color="0.85", zorder=0)
            ax.text(
                (span[0] + span[1]) / 2,
                0.02,
                "pruning +\nrecovery",
                transform=ax.get_xaxis_transform(),
                ha="center",
                fontsize=8,
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{base}, {task}, {density:.0%} density", fontsize=10)
        ax.set_xlabel("epoch (adaptation, pruning steps shaded, final)", fontsize=9)
        ax.set_ylabel("validation accuracy (%): mean, band min-max over seeds", fontsize=9)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0][-1], colours, markers)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)

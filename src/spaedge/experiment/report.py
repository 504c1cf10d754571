"""The experiment's report: the table (test accuracy at the rate chosen on
validation, mean ± std over seeds), which differences are within noise, the
Pareto plots (accuracy against task-bundle bytes and against MACs) and the
training curves."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from spaedge.experiment.grid import DEFAULT_TASKS, Budget
from spaedge.experiment.run import chosen_rates

__all__ = ["reported", "report"]


def reported(results: list[dict], budget: Budget) -> list[dict]:
    """The runs the table reports: each cell's runs at its chosen rate (all seeds)."""
    rates = chosen_rates(results, budget)
    return [
        r
        for r in results
        if r["config_key"] in rates
        and float(r["lr"]) == float(rates[r["config_key"]])
        and not r.get("diverged")
    ]


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    m = statistics.mean(values) * 100
    s = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


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


def _noise(rows: dict[tuple, list[dict]], tasks: list[str]) -> list[str]:
    """Per base, density and task: the best row against each other, flagged when
    the gap is under twice its standard error (sqrt(s1^2/n1 + s2^2/n2))."""
    lines = []
    for base, dens in sorted({(k[0], k[1]) for k in rows}, key=lambda k: (k[0], -k[1])):
        for t in tasks:
            accs = {
                k[2]: [r["test_accuracy"] * 100 for r in rs if r["task"] == t]
                for k, rs in rows.items()
                if k[:2] == (base, dens)
            }
            accs = {k: v for k, v in accs.items() if len(v) >= 2}
            if len(accs) < 2:
                continue
            best = max(accs, key=lambda k: statistics.mean(accs[k]))
            within = []
            for k, v in accs.items():
                if k == best:
                    continue
                b = accs[best]
                gap = statistics.mean(b) - statistics.mean(v)
                se = math.sqrt(statistics.variance(b) / len(b) + statistics.variance(v) / len(v))
                if gap < 2 * se:
                    within.append(f"{k} ({gap:.1f} ± {2 * se:.1f})")
            lines.append(
                f"- {base} {dens:.0%}, {t}: best {best} ({_ms([a / 100 for a in accs[best]])}); within "
                f"noise of it: {', '.join(within) if within else 'none'}"
            )
    return lines


def report(results: list[dict], out_dir: str | Path, budget: Budget, command: str = "") -> str:
    """Write results.md, results.csv, results.png and curves.png; return the table."""
    out = Path(out_dir)
    runs = reported(results, budget)
    tasks = sorted({r["task"] for r in runs}, key=lambda t: (DEFAULT_TASKS + (t,)).index(t))
    rows = _rows(runs)
    order = sorted(rows, key=lambda k: (k[0], -k[1], k[2]))
    head = (
        ["base", "density", "method (criterion)"]
        + tasks
        + ["avg", "learned params", "task bundle KB", "MMACs", "rate(s)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    summary = []
    for key in order:
        rs = rows[key]
        per_task = [[r["test_accuracy"] for r in rs if r["task"] == t] for t in tasks]
        means = [statistics.mean(v) for v in per_task if v]
        avg = statistics.mean(means) * 100 if means else float("nan")
        lp = statistics.mean(r["learned_parameters"] for r in rs)
        kb = statistics.mean(r["task_bundle_bytes"] for r in rs) / 1024
        macs = statistics.mean(r["macs"] for r in rs) / 1e6
        rates = "/".join(sorted({f"{float(r['lr']):g}" for r in rs}))
        lines.append(
            "| "
            + " | ".join(
                [key[0], f"{key[1]:.0%}", key[2]]
                + [_ms(v) for v in per_task]
                + [f"{avg:.1f}", f"{lp / 1e3:.1f}k", f"{kb:.1f}", f"{macs:.2f}", rates]
            )
            + " |"
        )
        summary.append(
            {"base": key[0], "density": key[1], "label": key[2], "avg": avg, "kb": kb, "macs": macs}
        )
    table = "\n".join(lines)
    seeds = sorted({r["seed"] for r in runs})
    noise = _noise(rows, tasks)
    compute = sum(r["seconds"] for r in results)
    wall = f" Compute: {compute / 3600:.2f} core-hours over {len(results)} runs (rate search included)."
    md = (
        f"# spaedge experiment\n\n{command}\n\nBudget: {budget.describe()}.{wall}\n\n"
        f"Test accuracy (%) mean ± std over seeds {seeds} at the learning rate chosen on validation (seed 0); "
        f"learned params, bundle size and MACs averaged over tasks and seeds.\n\n{table}\n\n"
        "## Within noise\n\nA gap smaller than twice its standard error (sqrt(s1²/n1 + s2²/n2)) is within "
        "noise.\n\n" + "\n".join(noise) + "\n" + _diverged(results)
    )
    (out / "results.md").write_text(md)
    fields = [
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
        "val_accuracy",
        "test_accuracy",
        "density_reached",
        "learned_parameters",
        "task_bundle_bytes",
        "macs",
        "seconds",
    ]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(r)
    _plots(summary, runs, out)
    return table


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other beats on both cost (lower) and accuracy (higher), by cost."""
    front, best = [], -math.inf
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _plots(summary: list[dict], runs: list[dict], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional: table and CSV are written without it
        return
    markers = {1.0: "o", 0.3: "s", 0.1: "^"}
    families = sorted({s["label"].split(" (")[0] for s in summary})
    palette = (
        plt.cm.tab10 if len(families) <= 10 else plt.cm.tab20
    )  # one colour per method while there are enough
    colours = {f: palette(i % palette.N) for i, f in enumerate(families)}
    bases = sorted({s["base"] for s in summary})
    fig, axes = plt.subplots(len(bases), 2, figsize=(14, 4.2 * len(bases)), squeeze=False)
    for row, base in enumerate(bases):
        pts = [s for s in summary if s["base"] == base]
        for col, (cost, name) in enumerate(
            (("kb", "task bundle KB (log)"), ("macs", "MMACs per image (log)"))
        ):
            ax = axes[row][col]
            for s in pts:
                fam = s["label"].split(" (")[0]
                ax.scatter(
                    s[cost],
                    s["avg"],
                    marker=markers.get(s["density"], "x"),
                    color=colours[fam],
                    label=fam if col == 0 else None,
                )
            front = _pareto([(s[cost], s["avg"]) for s in pts if not math.isnan(s["avg"])])
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.set_ylabel("test accuracy, mean over tasks (%)")
            ax.set_title(
                f"{base}: accuracy vs {name.split(' (')[0]} (o 100%, s 30%, ^ 10%; -- Pareto front)",
                fontsize=8,
            )
        handles, labels = axes[row][0].get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        axes[row][1].legend(
            uniq.values(), uniq.keys(), fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1)
        )
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)

    # Training curves: validation accuracy after every epoch, seed 0 at the chosen rate, one panel per
    # base, task and density; the dotted lines end the adaptation epochs and start the final ones.
    curves = [r for r in runs if r["seed"] == 0 and r.get("curve")]
    keys = sorted(
        {(r.get("base", ""), r["task"], r["density"]) for r in curves},
        key=lambda k: (k[0], k[1], -k[2]),
    )
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys) + 2.5, 3.6), squeeze=False)
    for ax, (base, task, density) in zip(axes[0], keys):
        for r in sorted(
            (
                c
                for c in curves
                if (c.get("base", ""), c["task"], c["density"]) == (base, task, density)
            ),
            key=lambda c: c["label"],
        ):
            acc = [h["val_accuracy"] * 100 for h in r["curve"]]
            fam = r["label"].split(" (")[0]
            ax.plot(range(1, len(acc) + 1), acc, lw=1, color=colours.get(fam), label=r["label"])
            phases = [h.get("phase") for h in r["curve"]]
            if "final" in phases and density < 1.0:
                ax.axvline(phases.index("final") + 0.5, color=colours.get(fam), lw=0.5, ls=":")
        ax.set_title(f"{base}, {task}, {density:.0%} density", fontsize=8)
        ax.set_xlabel("epoch (adaptation, recoveries, final)")
        ax.set_ylabel("validation accuracy (%)")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[0][-1].legend(handles, labels, fontsize=5, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

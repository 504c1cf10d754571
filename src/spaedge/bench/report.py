"""What a benchmark run reports: a text table, a bar chart, the whole result as
text (``spaedge bench``), and the benchmark suite's summary (``pytest
--benchmark-only``: one row per case, threads, engine and precision)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from spaedge.bench.engines import ENGINES, PRECISIONS, REFERENCE

__all__ = ["format_table", "png_chart", "report_text", "machine_line", "format_suite_summary"]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    """Rows with engine, precision, threads, median_ms, p90_ms, gflops, ratio
    (to onnxruntime at the same precision) and top1_agreement as text."""
    header = (
        "engine",
        "precision",
        "threads",
        "median ms",
        "p90 ms",
        "GFLOP/s",
        f"vs {REFERENCE}",
        "top-1 vs fp32",
    )
    with_accuracy = any(r.get("accuracy") is not None for r in rows)
    if with_accuracy:
        header += ("accuracy",)
    lines = [header]
    for r in rows:
        prec = r.get("precision") or "fp32"
        if r.get("error"):
            lines.append(
                (r["engine"], prec, str(r["threads"]), "unavailable") + ("",) * (len(header) - 4)
            )
            continue
        ratio = r.get("ratio")
        agree = r.get("top1_agreement")
        lines.append(
            (
                r["engine"],
                prec,
                str(r["threads"]),
                _fmt(r["median_ms"], ".3f"),
                _fmt(r["p90_ms"], ".3f"),
                _fmt(r.get("gflops"), ".1f"),
                "-" if ratio is None else f"{ratio:.2f}x",
                "-" if agree is None else f"{agree:.1%} of {r.get('check_images', '?')}",
            )
            + ((_fmt(r.get("accuracy"), ".2%"),) if with_accuracy else ())
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for j, row in enumerate(lines):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [
            c.rjust(w) for c, w in zip(row[2:], widths[2:])
        ]
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [
        f"  {r['engine']} {r.get('precision') or 'fp32'} ({r['threads']} threads): {r['error']}"
        for r in rows
        if r.get("error")
    ]
    return "\n".join(out + notes)


def png_chart(path: str, title: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    threads = sorted({r["threads"] for r in ok})

    def label(r: dict) -> str:
        p = r.get("precision") or "fp32"
        return r["engine"] if p == "fp32" else f"{r['engine']} {p}"

    engines = [
        f"{e} {p}" if p != "fp32" else e
        for p in PRECISIONS
        for e in ENGINES
        if any(label(r) == (f"{e} {p}" if p != "fp32" else e) for r in ok)
    ]
    fig, ax = plt.subplots(
        figsize=(1.6 + 1.5 * len(threads) * max(len(engines), 1) / 2, 3.6), dpi=120
    )
    width = 0.8 / max(len(engines), 1)
    for i, e in enumerate(engines):
        xs, med, err = [], [], []
        for j, t in enumerate(threads):
            r = next((r for r in ok if label(r) == e and r["threads"] == t), None)
            if r is None:
                continue
            xs.append(j + (i - (len(engines) - 1) / 2) * width)
            med.append(r["median_ms"])
            err.append(max(r["p90_ms"] - r["median_ms"], 0.0))
        bars = ax.bar(xs, med, width * 0.9, yerr=[[0] * len(err), err], capsize=3, label=e)
        for b, m in zip(bars, med):
            ax.annotate(
                f"{m:.2f}",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    top = max((r["median_ms"] for r in ok), default=1.0)
    ax.set_ylim(
        0, top * 1.4
    )  # a p90 whisker of a noisy run may leave the chart; the medians stay readable
    ax.set_xticks(range(len(threads)))
    ax.set_xticklabels([f"{t} thread{'s' if t > 1 else ''}" for t in threads])
    ax.set_ylabel("median latency, ms (bar: p90)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def report_text(result: dict) -> str:
    t, m = result["task"], result["machine"]
    macs = t["macs"]
    lines = [
        f"{t['name']}: {t['base_model']} task, input {t['input_size']}, batch 1, "
        f"{macs / 1e6:.1f} MMACs"
        + (f", {t['params'] / 1e6:.2f}M parameters" if t["params"] else "")
        + (f", density {t['density']:.0%}" if t.get("density") else ""),
        f"machine: {m['cpu']} ({m['cores']} cores"
        + (f", load average {m['loadavg'][0]:.1f}" if m.get("loadavg") else "")
        + f"), spaedge {result['isa']} kernels, mode {result['mode']}",
        "",
        format_table(result["latency"]),
        "",
    ]
    sw = result.get("switch") or {}
    for prec, one in (("fp32", sw), ("int8", sw.get("int8") or {})):
        if not one.get("spaedge_switch"):
            continue
        s = one["spaedge_switch"]
        line = (
            f"task switch{'' if prec == 'fp32' else ', ' + prec} "
            f"({' <-> '.join(one['between'])}, {one['threads']} threads): "
            f"spaedge {s['median_ms']:.3f} ms median (p90 {s['p90_ms']:.3f}, {s['runs']} switches)"
        )
        if "onnxruntime_session" in one:
            o = one["onnxruntime_session"]
            line += (
                f"; creating an onnxruntime{'' if prec == 'fp32' else ' ' + prec} session "
                f"{o['median_ms']:.1f} ms median "
                f"-> switch is {one['speedup']:.0f}x faster"
            )
        lines.append(line)
    if any(r.get("top1_agreement") is not None for r in result["latency"]):
        lines.append(
            f"top-1 vs fp32: the share of {result['latency'][0].get('check_images', '?')} "
            f"{result.get('checked_on', 'seeded random inputs')} whose top-1 class is the fp32 "
            f"reference's ({result['outputs_checked_against']})"
            + (
                "; accuracy: top-1 against their labels"
                if any("accuracy" in r for r in result["latency"])
                else ""
            )
        )
    if t["whole_bytes"]:
        lines.append(
            f"bundle: {t['bundle_bytes']:,} bytes; the same pruned model stored whole: "
            f"{t['whole_bytes']:,} bytes ({t['whole_bytes'] / t['bundle_bytes']:.1f}x larger)"
        )
    else:
        lines.append(f"bundle: {t['bundle_bytes']:,} bytes")
    i8 = t.get("int8")
    if i8:
        lines.append(
            f"int8: task bundle {i8['bundle_bytes']:,} bytes, base {i8['base_bytes']:,} bytes "
            f"(fp32 base {t['base_bytes']:,}); calibrated on {i8.get('calibration_images', '?')} images"
        )
        stats = {
            r["engine"]: r["statistic"]
            for r in result["latency"]
            if r.get("precision") == "int8" and r.get("statistic")
        }
        if stats:
            lines.append(
                "int8 range statistic: " + ", ".join(f"{e} {st}" for e, st in stats.items())
            )
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    """The machine a run was measured on, in one line: CPU model, cores, the
    ISA the spaedge runtime used (``m["isa"]``) and the peers' versions."""
    isa = m.get("isa") or "-"
    return (
        f"machine: {m['cpu']} ({m.get('machine', '?')}, {m['cores']} cores); spaedge runtime "
        f"ISA {isa}; onnxruntime {m.get('onnxruntime', '-')}, torch {m.get('torch', '-')}, "
        f"ai-edge-litert {m.get('ai_edge_litert', '-')}"
    )


def _columns(header: Sequence[str], rows: list[Sequence[str]], left: Sequence[int]) -> list[str]:
    """Aligned text columns: those numbered in ``left`` left-aligned, the rest
    right; an empty row is kept as a blank line."""
    widths = [max(len(str(r[i])) for r in [header, *rows] if r) for i in range(len(header))]

    def line(r):
        return "  ".join(
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()

    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) if r else "" for r in rows]


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def format_suite_summary(s: dict) -> str:
    """The benchmark suite's tables from its rows (``{"latency": [...], "switch":
    [...]}``, each row with kind, case, threads, engine, precision, median_ms,
    p90_ms and the ratios of ``compare.add_peer_ratios``)."""
    lines: list[str] = []
    lat = s.get("latency") or []
    if lat:
        lines += [
            "latency, batch 1, median and p90 of the timed calls. vs fastest peer: median / the "
            "median of the fastest peer",
            "(onnxruntime, LiteRT, PyTorch) at the same case, threads and precision, below 1x = "
            "faster; vs ORT: median / onnxruntime's at the same precision;",
            "vs fp32: an int8 row's median / the same engine's fp32 median; top-1: int8 top-1 "
            "agreement with fp32 on seeded random inputs",
            "",
        ]
        rows: list[Sequence[str]] = []
        last = None
        for r in lat:
            key = (r["case"], r["threads"])
            if last is not None and key != last:
                rows.append(())
            last = key
            peer = (
                "-"
                if r["vs_fastest_peer"] is None
                else f"{_x(r['vs_fastest_peer'])} {r['fastest_peer']}"
            )
            rows.append(
                (
                    r["case"],
                    str(r["threads"]),
                    r["engine"],
                    r.get("precision") or "-",
                    f"{r['median_ms']:.3f}",
                    f"{r['p90_ms']:.3f}",
                    _fmt(r.get("gflops"), ".1f"),
                    _x(r.get("vs_onnxruntime")),
                    peer,
                    _x(r.get("vs_fp32")),
                    "-" if r.get("top1_agreement") is None else f"{r['top1_agreement']:.0%}",
                )
            )
        head = (
            "case",
            "threads",
            "engine",
            "precision",
            "median ms",
            "p90 ms",
            "GFLOP/s",
            "vs ORT",
            "vs fastest peer",
            "vs fp32",
            "top-1",
        )
        lines += _columns(head, rows, left=(0, 2, 3, 8))
    sw = s.get("switch") or []
    if sw:
        lines += [
            "",
            "task switch: Runtime.switch between two loaded tasks vs creating an onnxruntime "
            "session (ORT / this: how many times faster than the session)",
            "",
        ]
        rows = []
        for r in sw:
            x = "-"
            if r["fastest_peer"] and r["engine"] != r["fastest_peer"]:
                x = f"{r['fastest_peer_ms'] / r['median_ms']:.0f}x"
            rows.append(
                (
                    r["case"],
                    str(r["threads"]),
                    r["engine"],
                    r.get("precision") or "-",
                    f"{r['median_ms']:.3f}",
                    f"{r['p90_ms']:.3f}",
                    x,
                )
            )
        head = ("case", "threads", "what", "precision", "median ms", "p90 ms", "ORT / this")
        lines += _columns(head, rows, left=(0, 2, 3))
    sizes: dict[tuple, dict] = {}
    for r in lat:
        sizes.setdefault((r["case"], r.get("precision") or "fp32"), r)
    if sizes:
        lines += [
            "",
            "what each case is: MACs and parameters of the pruned model, task bundle vs the same "
            "pruned model stored whole, the base bundle",
            "",
        ]
        rows = []
        for (case, prec), r in sizes.items():
            whole = r.get("whole_model_bytes") or 0
            rows.append(
                (
                    case,
                    prec,
                    str(r["input_size"]),
                    "-" if r.get("density") is None else f"{r['density']:.1%}",
                    f"{r['macs'] / 1e6:.1f}",
                    f"{r['params']:,}",
                    f"{r['bundle_bytes']:,}",
                    f"{whole:,}" if whole else "-",
                    f"{whole / r['bundle_bytes']:.1f}x" if whole else "-",
                    f"{r['base_bytes']:,}" if r.get("base_bytes") else "-",
                )
            )
        head = (
            "case",
            "precision",
            "input",
            "density",
            "MMACs",
            "params",
            "bundle B",
            "whole B",
            "whole/bundle",
            "base B",
        )
        lines += _columns(head, rows, left=(0, 1))
    return "\n".join(lines)

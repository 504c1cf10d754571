"""``spaedge info``: what a bundle holds."""

from __future__ import annotations

from pathlib import Path

from spaedge.argtypes import path_text
from spaedge.cli.common import human_bytes, human_count, print_table
from spaedge.pack.format import json_field, read_bundle


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="what a bundle holds", description="Print a bundle's metadata and sizes.")
    i.add_argument("bundle", type=path_text, help="a base or task bundle (.safetensors)")
    i.set_defaults(func=main)


def main(args) -> int:
    path = Path(args.bundle)
    tensors, meta = read_bundle(path)
    size = path.stat().st_size
    print(f"{path}: {meta['format']} version {meta['version']}, {human_bytes(size)}, "
          f"{len(tensors)} tensors, content {meta['content_hash'][:16]}")
    if meta["format"] == "spaedge-base":
        graph = json_field(meta, "graph", str(path))
        convs = [n for n in graph["nodes"] if n["op"] == "conv"]
        params = sum(int(t.size) for k, t in tensors.items() if k.endswith(".weight"))
        print_table([("model", meta.get("model", "?")), ("graph", f"{len(graph['nodes'])} nodes, {len(convs)} convs"),
                      ("input channels", str(graph["input_channels"])), ("weights", human_count(params))])
    else:
        inp = json_field(meta, "input", str(path))
        labels = json_field(meta, "labels", str(path))
        info = json_field(meta, "info", str(path)) if "info" in meta else {}
        rows = [("task", meta["task"]), ("method", meta.get("method", "?")),
                ("base", meta["base_hash"][:16]),
                ("input", f"{inp['channels']}x{inp['height']}x{inp['width']}, mean {inp['mean']}, std {inp['std']}"),
                ("labels", f"{len(labels)}: {', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''}")]
        for k, v in info.items():
            rows.append((k.replace("_", " "), f"{v:.4g}" if isinstance(v, float) else str(v)))
        print_table(rows)
    return 0

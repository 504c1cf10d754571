"""``spaedge info``: what a bundle holds.

The bundle is read and checked by the C++ runtime's own reader
(``spaedge.runtime.inspect_bundle``): regular files only, a bounded header,
the data streamed through the content hash in constant memory, the metadata
checked with the rules loading applies. Everything printed from the file is
escaped, so a name cannot move the cursor or clear the terminal.
"""

from __future__ import annotations

import json
import os
import unicodedata

from spaedge.argtypes import path_text
from spaedge.cli.common import human_bytes, human_count, print_table
from spaedge.errors import BundleError


def add_parser(sub) -> None:
    from spaedge import runtime  # noqa: F401 - the command needs the compiled runtime

    i = sub.add_parser(
        "info",
        help="what a bundle holds",
        description="Check a bundle with the runtime's reader and print its metadata and sizes.",
    )
    i.add_argument("bundle", type=path_text, help="a base or task bundle (.safetensors)")
    i.add_argument(
        "--no-verify",
        action="store_true",
        help="do not recompute the content hash (reads the header only; the data is not checked)",
    )
    i.set_defaults(func=main)


# Categories escaped in output: controls, format characters (bidi overrides,
# zero-width joiners), line/paragraph separators, surrogates, private use, unassigned.
_UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def clean(text) -> str:
    """``text`` with every character a terminal could act on written as an escape."""
    out = []
    for c in str(text):
        if unicodedata.category(c) in _UNSAFE:
            o = ord(c)
            out.append(
                f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"
            )
        else:
            out.append(c)
    return "".join(out)


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str):
        return clean(v)
    return clean(json.dumps(v, ensure_ascii=False))


def _floats(vs) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in vs) + "]"


def main(args) -> int:
    from spaedge.runtime import inspect_bundle

    path = os.fspath(args.bundle)
    if "\0" in path:
        raise BundleError(
            f"{clean(path)}: path contains a NUL byte (the file name would be cut there)"
        )
    if not os.path.lexists(path):
        raise BundleError(f"{clean(path)}: no such bundle file")
    try:
        s = inspect_bundle(path, verify=not args.no_verify)
    except BundleError as e:
        raise BundleError(clean(str(e))) from None
    checked = (
        "content hash checked" if s["hash_verified"] else "content hash NOT checked (--no-verify)"
    )
    precision = clean(s["metadata"].get("precision", "fp32"))
    print(
        f"{clean(path)}: {s['format']} version {clean(s['version'])}, {precision}, "
        f"{human_bytes(s['file_bytes'])}, {len(s['tensors'])} tensors, "
        f"content {s['content_hash'][:16]} ({checked})"
    )
    if s["format"] == "spaedge-base":
        weights = 0
        for name, _, shape in s["tensors"]:
            if name.endswith(".weight"):
                n = 1
                for d in shape:
                    n *= d
                weights += n
        print_table(
            [
                ("model", clean(s["model"])),
                ("graph", f"{s['nodes']} nodes, {s['convs']} convs"),
                ("input channels", str(s["input_channels"])),
                ("weights", human_count(weights)),
                ("weights from", clean(s["metadata"].get("weights", "not recorded"))),
            ]
            + (
                [
                    (
                        "quantized from",
                        clean(s["metadata"].get("quantized_from", "not recorded"))[:16],
                    )
                ]
                if precision == "int8"
                else []
            )
        )
    else:
        inp, labels = s["input"], s["labels"]
        shown = ", ".join(clean(v) for v in labels[:10])
        rows = [
            ("task", clean(s["task"])),
            ("method", clean(s["method"])),
            ("base", s["base_hash"][:16]),
            (
                "input",
                f"{inp['channels']}x{inp['height']}x{inp['width']}, mean {_floats(inp['mean'])}, "
                f"std {_floats(inp['std'])}",
            ),
            ("labels", f"{len(labels)}: {shown}{' ...' if len(labels) > 10 else ''}"),
        ]
        if s["shared_adapters"]:
            rows.append(
                (
                    "shared adapters",
                    f"{len(set(s['shared_adapters'].values()))}, used by "
                    f"{len(s['shared_adapters'])} convs",
                )
            )
        for k, v in s["info"].items():
            rows.append((clean(k.replace("_", " ")), _value(v)))
        print_table(rows)
    return 0

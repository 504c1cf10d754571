"""What every command shares: the user-facing error, number formatting, tables,
and the training flags generated from ``TrainConfig``."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Iterable, Optional

__all__ = ["CliError", "EXIT_USAGE", "human_bytes", "human_count", "print_table", "add_config_flags",
           "config_from_args"]

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def add_config_flags(parser: argparse.ArgumentParser, config_cls, names: Optional[Iterable[str]] = None,
                     title: Optional[str] = None) -> None:
    """One ``--flag`` per field of the dataclass ``config_cls`` (or of the fields
    ``names``), with the field's default, help, parser and choices (its metadata)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    group = parser.add_argument_group(title) if title else parser
    for name in (names if names is not None else fields):
        f = fields[name]
        meta = f.metadata
        choices = meta["choices"]() if meta.get("choices") else None
        described = meta["describe"]() if meta.get("describe") else ""
        kw = {"default": f.default, "dest": f.name,
              "help": meta.get("help", "").format(default=f.default, described=described)}
        if choices is not None:
            kw["choices"] = choices
        if meta.get("parse") is not None:
            kw["type"] = meta["parse"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def config_from_args(config_cls, args: argparse.Namespace):
    """The config whose fields the parsed ``args`` set (fields without a flag keep their default)."""
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
                         if hasattr(args, f.name)})

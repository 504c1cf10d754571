"""What every command shares: the user-facing error, number formatting, tables,
and the training flags generated from ``TrainConfig``."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable

__all__ = [
    "CliError",
    "EXIT_USAGE",
    "human_bytes",
    "human_count",
    "print_table",
    "add_config_flags",
    "config_from_args",
    "add_env_flags",
    "env_from_args",
]

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


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_cls,
    names: Iterable[str] | None = None,
    title: str | None = None,
) -> None:
    """One ``--flag`` per field of the dataclass ``config_cls`` (or of the fields
    ``names``), with the field's default, help, parser and choices (its metadata)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    group = parser.add_argument_group(title) if title else parser
    for name in names if names is not None else fields:
        f = fields[name]
        meta = f.metadata
        choices = meta["choices"]() if meta.get("choices") else None
        described = meta["describe"]() if meta.get("describe") else ""
        kw = {
            "default": f.default,
            "dest": f.name,
            "help": meta.get("help", "").format(default=f.default, described=described),
        }
        if choices is not None:
            kw["choices"] = choices
        if meta.get("parse") is not None:
            kw["type"] = meta["parse"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def config_from_args(config_cls, args: argparse.Namespace):
    """The config whose fields the parsed ``args`` set (fields without a flag keep their default)."""
    return config_cls(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(config_cls)
            if hasattr(args, f.name)
        }
    )


def add_env_flags(parser: argparse.ArgumentParser) -> None:
    """--device, --precision, --loader-workers and --no-download (spaedge.train.device.TrainEnv)."""
    from spaedge.argtypes import nonneg_int
    from spaedge.train.device import PRECISIONS, TrainEnv

    help_of = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainEnv)}
    d = TrainEnv()
    g = parser.add_argument_group("the machine (not part of the run's config)")
    g.add_argument(
        "--device", default=d.device, metavar="DEVICE", help=help_of["device"] + " (default auto)"
    )
    g.add_argument(
        "--precision",
        default=d.precision,
        choices=PRECISIONS,
        help=help_of["precision"] + " (default auto)",
    )
    g.add_argument(
        "--loader-workers",
        type=nonneg_int,
        default=d.loader_workers,
        metavar="N",
        help=help_of["loader_workers"] + " (default 0)",
    )
    g.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        help="use only local weights and data; never download (files a download would fetch are "
        "named in the error, with where to put them)",
    )


def env_from_args(args: argparse.Namespace):
    from spaedge.train.device import TrainEnv

    return TrainEnv(
        device=args.device,
        precision=args.precision,
        loader_workers=args.loader_workers,
        download=args.download,
    )

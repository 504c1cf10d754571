"""What every command shares: the user-facing error, number formatting, tables,
and the training flags generated from ``TrainConfig`` and the methods' options."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CliError",
    "EXIT_USAGE",
    "clean_killed_packs",
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


def clean_killed_packs(task_path: Path) -> list[Path]:
    """Remove the checked copies ``.TASK.safetensors.new-PID`` (and their
    temporaries) that packs killed before installing them (SIGKILL, power
    loss) left beside ``task_path``; a running pack's are kept."""
    from spaedge.paths import remove_stale

    pattern = re.escape(f".{task_path.name}.new-") + r"(?P<pid>\d+)(\.tmp-\d+)?"
    return remove_stale(task_path.parent, pattern)


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


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_flag(group, f: dataclasses.Field, help_prefix: str = "", **kw) -> None:
    """The ``--flag`` of field ``f``: its help, parser, choices and metavar (its metadata)."""
    meta = f.metadata
    choices = meta.get("choices")
    choices = choices() if callable(choices) else choices
    described = meta["describe"]() if meta.get("describe") else ""
    kw["help"] = help_prefix + meta.get("help", "").format(default=f.default, described=described)
    if choices is not None:
        kw["choices"] = list(choices)
    if meta.get("parse") is not None:
        kw["type"] = meta["parse"]
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    group.add_argument(_flag_name(f.name), dest=f.name, **kw)


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_cls,
    names: Iterable[str] | None = None,
    title: str | None = None,
) -> None:
    """One ``--flag`` per field of the dataclass ``config_cls`` (or of the fields
    ``names``), with the field's default, help, parser and choices (its metadata).
    The field marked ``method_options`` (``TrainConfig.options``) stands for every
    registered method's options, one flag each (``spaedge.adapters.registry``)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    group = parser.add_argument_group(title) if title else parser
    for name in names if names is not None else fields:
        f = fields[name]
        if f.metadata.get("method_options"):
            _add_method_option_flags(parser)
        else:
            _add_flag(group, f, default=f.default)


def _add_method_option_flags(parser: argparse.ArgumentParser) -> None:
    from spaedge.adapters.registry import option_fields

    group = parser.add_argument_group(
        "the method's options (each only for the methods it names; defaults are the method's)"
    )
    for f, methods in option_fields().values():
        # Absent unless given, so an option given to a method without it is an error.
        prefix = f"for --method {', '.join(methods)}: "
        _add_flag(group, f, prefix, default=argparse.SUPPRESS)


def config_from_args(config_cls, args: argparse.Namespace):
    """The config whose fields the parsed ``args`` set (fields without a flag keep
    their default); with ``TrainConfig``, the chosen method's options from their
    flags, and a CliError for an option flag the method does not take."""
    values = {}
    for f in dataclasses.fields(config_cls):
        if f.metadata.get("method_options"):
            values[f.name] = _method_options(args)
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return config_cls(**values)


def _method_options(args: argparse.Namespace):
    from spaedge.adapters.registry import get_method, option_fields

    method = get_method(args.method)
    given = {name: getattr(args, name) for name in option_fields() if hasattr(args, name)}
    for name in given:
        if name not in method.option_names:
            takers = ", ".join(option_fields()[name][1])
            own = ", ".join(map(_flag_name, method.option_names)) or "no options"
            raise CliError(
                f"{_flag_name(name)} is an option of --method {takers}, not of --method "
                f"{method.name} (which takes {own}): drop it or choose one of those methods"
            )
    return method.options(**given)


def add_env_flags(parser: argparse.ArgumentParser, precision_flag: str = "--precision") -> None:
    """--device, --precision, --loader-workers and --no-download (spaedge.train.device.TrainEnv).

    ``precision_flag``: the name of the training arithmetic's flag (``spaedge
    pack`` calls it --train-precision: its --precision is the bundles')."""
    from spaedge.argtypes import nonneg_int
    from spaedge.train.device import PRECISIONS, TrainEnv

    help_of = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainEnv)}
    d = TrainEnv()
    g = parser.add_argument_group("the machine (not part of the run's config)")
    g.add_argument(
        "--device", default=d.device, metavar="DEVICE", help=help_of["device"] + " (default auto)"
    )
    g.add_argument(
        precision_flag,
        dest="precision",
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

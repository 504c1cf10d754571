"""Values read from the command line: each parser checks a text and says what is wrong.

Shared by the training configuration's flags (``spaedge.train.config``, the
methods' options in ``spaedge.adapters``) and the other commands; argparse
prints the message as a usage error. ``flag`` declares a dataclass field
together with what its command-line flag needs.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "flag",
    "parse_density",
    "positive_int",
    "nonneg_int",
    "unit_fraction",
    "path_text",
    "parse_sparsity",
]


def flag(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    choices: Sequence | Callable[[], Sequence] | None = None,
    describe: Callable[[], str] | None = None,
    metavar: str | None = None,
):
    """A dataclass field with what its ``--flag`` needs (``spaedge.cli.common``
    generates the flags): ``help`` may hold ``{default}`` and ``{described}``
    (what ``describe()`` says of the choices); ``choices`` is a sequence, or a
    function giving one when the parser is built (a registry filled later)."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "parse": parse,
            "choices": choices,
            "describe": describe,
            "metavar": metavar,
        },
    )


def parse_density(text: str) -> float:
    """A density in (0, 1], or a percentage like ``30%``."""
    # A bare number above 1 is refused rather than read as a percentage:
    # "--density 2" is more likely a slip than a wish for 2%.
    try:
        v = float(text[:-1]) / 100.0 if str(text).endswith("%") else float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(
            f"density must be in (0, 1] or (0%, 100%], e.g. 0.3 or 30%; got {text}"
        )
    return v


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return v


def unit_fraction(text: str) -> float:
    v = float(text)
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return v


def path_text(text: str) -> str:
    """A path as typed: refused when no file could have that name (a NUL byte, empty)."""
    if "\x00" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} contains a NUL byte: no file can have that name"
        )
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return text


def parse_sparsity(text: str) -> float:
    """A sparsity in [0, 1), or a percentage like ``40%``: the fraction of entries masked."""
    try:
        v = float(text[:-1]) / 100.0 if str(text).endswith("%") else float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(
            f"sparsity must be in [0, 1) or [0%, 100%), e.g. 0.4 or 40%; got {text}"
        )
    return v

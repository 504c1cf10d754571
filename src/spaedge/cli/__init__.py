"""The ``spaedge`` command.

    spaedge pack --task digits            prune, train (if needed) and pack a task
    spaedge train --task digits           prune and train a task into a run directory
    spaedge run --bundles DIR --task T    run a packed task in the C++ runtime
    spaedge info BUNDLE                   what a bundle holds
    spaedge pretrain                      recreate the built-in base's weights
    spaedge tasks                         the tasks spaedge knows

Every command prints what it did in words a person reads; errors are one
clear line (exit code 2), never a traceback, for bad input.
"""

from __future__ import annotations

import argparse
import os
import sys

from spaedge.cli import bench, experiment, info, library, pack, pretrain, run, tasks, train
from spaedge.cli.common import EXIT_USAGE, CliError
from spaedge.download import DownloadError
from spaedge.errors import BundleError

__all__ = ["main", "build_parser", "CliError", "EXIT_USAGE"]

# One module per command, in the order `spaedge --help` lists them.
COMMANDS = (train, pack, run, info, pretrain, tasks, bench, experiment, library)


def _unavailable(sub, module, reason: str) -> None:
    """A command whose parts are not installed here (the toolchain on a device,
    say): it still appears, and running it says what is missing."""
    name = module.__name__.rsplit(".", 1)[1]
    p = sub.add_parser(name, help=f"(unavailable here: {reason})", add_help=True)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def fail(args) -> int:
        raise CliError(f"needs parts that are not installed here ({reason}); install the toolchain: "
                       "pip install 'spaedge[train]' torch==2.13.0")
    p.set_defaults(func=fail)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spaedge", description=__doc__.split("\n\n")[1].rstrip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run `spaedge COMMAND --help` for a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        try:
            module.add_parser(sub)
        except ImportError as e:  # the toolchain (torch) or the compiled runtime is not installed
            _unavailable(sub, module, str(e))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args) or 0
    except (CliError, BundleError, DownloadError, FileNotFoundError, ValueError) as e:
        if os.environ.get("SPAEDGE_DEBUG"):
            raise
        print(f"spaedge {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"spaedge {args.command}: interrupted; no partial bundle was written", file=sys.stderr)
        return 130

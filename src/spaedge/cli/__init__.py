"""The ``spaedge`` command.

    spaedge pack --task digits            prune, train (if needed) and pack a task
    spaedge quantize --task digits        turn a packed fp32 pair into int8
    spaedge train --task digits           prune and train a task into a run directory
    spaedge run --bundles DIR --task T    run a packed task in the C++ runtime
    spaedge info BUNDLE                   what a bundle holds
    spaedge pretrain                      recreate the built-in base's weights
    spaedge tasks                         the tasks spaedge knows
    spaedge bench --task T                latency of a packed task against other engines
    spaedge experiment                    the methods x criteria x densities comparison grid
    spaedge library add|list              libraries of pruning plans (--schedule similar)

Every command prints what it did in words a person reads; errors are one
clear line (exit code 2), never a traceback, for bad input.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from spaedge.cli.common import EXIT_USAGE, CliError

__all__ = ["main", "build_parser", "CliError", "EXIT_USAGE"]

# One module per command (spaedge.cli.<name>), in the order `spaedge --help` lists them,
# with the one line `spaedge --help` shows (the module's own add_parser says the
# same; tests/cli/test_device_side.py checks). Only the command being run has
# its parser built: `spaedge --help` and the device commands never import torch.
COMMANDS = {
    "train": "prune and adapt a task into a run directory",
    "pack": "write base + task bundles (training first if needed)",
    "quantize": "turn a packed fp32 base + task pair into int8",
    "run": "run a packed task in the C++ runtime",
    "info": "what a bundle holds",
    "pretrain": "recreate a built-in base's weights",
    "tasks": "list the known tasks",
    "bench": "latency of a packed task: spaedge vs onnxruntime, LiteRT, PyTorch (fp32 and int8)",
    "experiment": "methods x criteria x densities x ranks over tasks and seeds",
    "library": "libraries of pruned task plans (for --schedule similar)",
}


def _unavailable(sub, name: str, reason: str) -> None:
    """A command whose parts are not installed here (the toolchain on a device,
    say): it still appears, and running it says what is missing."""
    # No option prefix: every argument (--task, --help...) is taken as it comes.
    p = sub.add_parser(
        name, help=f"(unavailable here: {reason})", add_help=False, prefix_chars="\0"
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def fail(args) -> int:
        raise CliError(
            f"needs parts that are not installed here ({reason}); install the toolchain: "
            "pip install 'spaedge[train]' torch==2.13.0"
        )

    p.set_defaults(func=fail)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``spaedge`` parser. With ``argv``, only the command it names gets its
    options (the others are listed by name and help line); without, all do."""
    p = argparse.ArgumentParser(
        prog="spaedge",
        description=__doc__.split("\n\n")[1].rstrip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `spaedge COMMAND --help` for a command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    wanted = set(COMMANDS) if argv is None else {_command_of(argv)}
    for name, help_line in COMMANDS.items():
        if name not in wanted:
            sub.add_parser(name, help=help_line, add_help=False)
            continue
        try:
            importlib.import_module(f"spaedge.cli.{name}").add_parser(sub)
        except ImportError as e:  # the toolchain (torch) or the compiled runtime is not installed
            _unavailable(sub, name, str(e))
    return p


def _command_of(argv: list[str]) -> str | None:
    """The command an argument list names: its first word that is not an option."""
    for a in argv:
        if a == "--":
            return None
        if not a.startswith("-"):
            return a
    return None


def _terminate(signum, frame):
    raise Terminated()


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: files being written are cleaned up."""


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    command = "spaedge"
    try:  # the commands' modules load inside: Ctrl-C while the toolchain loads is a clean exit too
        argv = sys.argv[1:] if argv is None else list(argv)
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        command = f"spaedge {args.command}" if getattr(args, "command", None) else command
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return args.func(args) or 0
    except (
        CliError,
        ValueError,
        OSError,
    ) as e:  # BundleError, DownloadError, PathProblem, Diverged... are these
        if os.environ.get("SPAEDGE_DEBUG"):
            raise
        print(f"{command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(
            f"{command}: {how}; no half-written file was left (a training run resumes from its last "
            "checkpoint when run again)",
            file=sys.stderr,
        )
        return 143 if isinstance(e, Terminated) else 130


def _one_line(e: BaseException) -> str:
    """The error as one line, with any ``scheme://user:password@`` password hidden."""
    from spaedge.download import redact

    return redact(" ".join(str(e).split())) or type(e).__name__

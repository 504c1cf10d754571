"""The methods' option flags (spaedge.adapters.registry, spaedge.cli.common):
one flag per option of any registered method, in `spaedge train --help` with
its help; the chosen method's options built from them; a flag the method does
not take is one clear line. In process: nothing trains."""

from __future__ import annotations

import dataclasses
import re

import pytest

from spaedge.adapters import get_method, method_names
from spaedge.adapters.pear import PearOptions
from spaedge.adapters.sparse import SparseOptions
from spaedge.adapters.sparse_masks import MaskOptions
from spaedge.cli import build_parser, main
from spaedge.cli.common import CliError, config_from_args
from spaedge.train import TrainConfig


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _config(*argv: str) -> TrainConfig:
    args = build_parser().parse_args(["train", *argv])
    return config_from_args(TrainConfig, args)


@pytest.mark.parametrize("command", ["train", "pack"])
def test_help_lists_every_option_of_every_method_with_its_help(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100000")  # one line per flag: the help compares whole
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in method_names():
        for f in dataclasses.fields(get_method(name).options):
            text = f.metadata["help"].format(default=f.default).replace("%%", "%")
            # the flag, then its help after the methods that take it
            found = re.search(
                re.escape(_flag(f.name)) + r" .*?for --method ([^:]+): " + re.escape(text), out
            )
            assert found and name in found[1].split(", "), (name, f.name)
    assert "for --method pear: fraction of adapters pruned" in out
    assert (
        "for --method splora, pear, sparse, sparse-large, splopa: adapter rank (default 8)" in out
    )


def test_the_flags_give_the_chosen_methods_options():
    assert _config().options == get_method("splora").options()  # defaults
    assert _config("--rank", "4").rank == 4
    assert _config("--method", "pear", "--pear-share", "none", "--rank", "2").options == (
        PearOptions(rank=2, pear_share="none")
    )
    cfg = _config("--method", "sparse-large", "--sparsity", "60%", "--mask-criterion", "grasp")
    assert cfg.options == SparseOptions(sparsity=0.6, mask_criterion="grasp")
    cfg = _config("--method", "sparse-sppara", "--sparsity", "0.8")
    assert cfg.options == MaskOptions(sparsity=0.8) and cfg.rank is None
    assert _config("--method", "finetune").to_json().keys().isdisjoint({"rank", "sparsity"})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "finetune", "--rank", "4"], "--rank is an option of --method splora"),
        (["--pear-share", "none"], "--pear-share is an option of --method pear, not of --method"),
        (["--method", "sppara", "--sparsity", "0.5"], "not of --method sppara"),
        (["--method", "pear", "--splopa-share", "stage"], "--splopa-share is an option of"),
    ],
)
def test_an_option_the_method_does_not_take_is_one_clear_line(argv, message, capsys):
    with pytest.raises(CliError, match=message):
        _config(*argv)
    # as a user sees it: before anything trains, exit code 2, one line
    assert main(["train", *argv, "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err
    assert message in err and "drop it" in err and len(err.strip().splitlines()) == 1

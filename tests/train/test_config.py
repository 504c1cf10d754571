"""TrainConfig holds the chosen method's options (spaedge.adapters.registry):
its JSON (a run's config.json, a checkpoint's config) is flat, reads back the
same, and a config written before the options moved reads as the same config."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import spaedge.train.config
from spaedge.adapters import get_method, method_names
from spaedge.adapters.pear import PearOptions
from spaedge.adapters.registry import RankOptions, option_fields
from spaedge.train import TrainConfig, checkpoint

# What `spaedge train --method pear --pear-share none` wrote in config.json before
# the options moved into the methods: every method's options, flat.
OLD_PEAR = {
    "task": "digits",
    "base": "tiny",
    "base_weights": None,
    "data_dir": "/data",
    "method": "pear",
    "rank": 4,
    "density": 0.3,
    "criterion": "magnitude",
    "schedule": "iterative",
    "library": None,
    "neighbours": 3,
    "train_limit": 0,
    "test_limit": 0,
    "val_limit": 0,
    "score_batches": 4,
    "mask_criterion": "snip",
    "sparsity": 0.4,
    "pear_prune": 0.5,
    "pear_share": "none",
    "pear_knowledge": "weighted",
    "splopa_share": "model",
    "prune_step": 0.05,
    "epochs": 12,
    "total_epochs": 0,
    "early_stopping": 0,
    "recovery_epochs": 1,
    "final_epochs": 8,
    "batch_size": 32,
    "lr": 0.01,
    "weight_decay": 0.0,
    "seed": 0,
}


@pytest.mark.parametrize("method", method_names())
def test_the_json_is_flat_and_reads_back_the_same(method):
    cfg = TrainConfig(method=method, seed=3)
    assert type(cfg.options) is get_method(method).options  # the method's defaults
    d = cfg.to_json()
    assert not any(isinstance(v, dict) for v in d.values())
    own = set(get_method(method).option_names)
    assert own <= set(d) and not (set(option_fields()) - own) & set(d)  # its options only
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_json(d) == cfg
    assert (cfg.rank is None) == (not get_method(method).uses_rank)


def test_option_names_are_not_config_fields():
    """The flat JSON and the flags need one namespace: no option is named like a field."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not fields & set(option_fields())


def test_a_config_of_the_previous_layout_reads_as_the_same_config():
    cfg = TrainConfig.from_json(OLD_PEAR)
    assert cfg.options == PearOptions(rank=4, pear_share="none")
    assert cfg.to_json() == {
        k: v for k, v in OLD_PEAR.items() if k not in ("mask_criterion", "sparsity", "splopa_share")
    }
    # a method without a rank: the old config's rank is not one of its options
    fine = TrainConfig.from_json({**OLD_PEAR, "method": "finetune"})
    assert fine.options == get_method("finetune").options() and "rank" not in fine.to_json()


def test_options_of_another_method_are_refused():
    with pytest.raises(ValueError, match="not those of method 'finetune'"):
        TrainConfig(method="finetune", options=RankOptions(rank=4))
    with pytest.raises(ValueError, match="not those of method 'pear'"):
        TrainConfig(method="pear", options=RankOptions(rank=4))


def test_a_checkpoint_written_with_the_previous_layout_still_resumes(tmp_path):
    """A run interrupted before the upgrade resumes after it under the same flags;
    one with other settings is still refused."""
    path = tmp_path / checkpoint.CHECKPOINT
    checkpoint.save(
        path,
        position=checkpoint.Position(),
        config=OLD_PEAR,
        model=nn.Linear(2, 2),
        generator=torch.Generator(),
    )
    want = TrainConfig.from_json(OLD_PEAR).to_json()
    normalise = lambda d: TrainConfig.from_json(d).to_json()  # noqa: E731  (as the pipeline does)
    with pytest.raises(checkpoint.CheckpointError, match="other settings"):
        checkpoint.load(path, want)  # compared as stored, the shapes differ
    assert checkpoint.load(path, want, normalise) is not None
    other = TrainConfig.from_json({**OLD_PEAR, "pear_share": "nearest"}).to_json()
    with pytest.raises(checkpoint.CheckpointError, match="pear_share 'none' there, 'nearest' now"):
        checkpoint.load(path, other, normalise)


def test_the_config_reads_method_options_from_the_registry_only():
    """train/config.py imports no method module (their options come from the registry)."""
    tree = ast.parse(Path(spaedge.train.config.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    adapters = {m for m in imported if m.startswith("spaedge.adapters")}
    assert adapters == {"spaedge.adapters.registry"}, adapters

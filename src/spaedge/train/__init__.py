"""Training: the configuration, the loops and the one adapt -> prune -> train pipeline.

config.py       TrainConfig (every field is a command-line flag)
setup.py        base, task and adapted model from a config
loops.py        fit / predict / evaluate
pipeline.py     train_task (every training in spaedge) and run (+ the run directory)
checkpoint.py   resuming an interrupted run
distributed.py  data-parallel training under torchrun
library.py      plan files and libraries (pruning a task from similar ones)
pretrain.py     pretraining a built-in base
"""

from spaedge.train.config import TrainConfig
from spaedge.train.loops import evaluate, fit, predict
from spaedge.train.pipeline import Trained, run, train_task
from spaedge.train.setup import build_task_model

__all__ = [
    "TrainConfig",
    "Trained",
    "train_task",
    "run",
    "fit",
    "evaluate",
    "predict",
    "build_task_model",
]

"""``spaedge experiment``: methods x criteria x densities x ranks over tasks and seeds.

Protocol (offline default): a built-in base (``tiny``, or ``small``,
pretrained on Fashion-MNIST classes 0-5) adapted to three tasks whose images
it never saw in pretraining: ``digits`` (8x8 handwritten digits upscaled, 10
classes), ``fashion_mnist_new`` (Fashion-MNIST classes 6-9) and
``fashion_mnist:6,8`` (shirt vs bag). Each run is the training pipeline
(``spaedge.train.pipeline.train_task``) under the grid's ``Budget``: the
same training images, the same total epochs for every schedule (recovery
epochs included; early stopping on validation only if asked, off by default),
and the same learning-rate grid for every method, the rate chosen per cell on validation accuracy
(seed 0), never on test; then the reported seeds at that rate (1..N: seed 0
only chooses, unless --report-selection-seed). The report gives test
accuracy mean ± std over seeds with a binomial interval for the test set's
size, each row's paired difference against fine-pruning and whether it is
within noise, learned parameters, task-bundle bytes and MACs, per-seed CSVs,
Pareto plots against parameters and MACs and the training curves.

    grid.py    cells and the budget
    run.py     the rate search and the seeds (resumable, shardable)
    report.py  the table, paired differences and intervals, the CSVs, the plots
"""

from spaedge.experiment.grid import (
    DEFAULT_LRS,
    DEFAULT_TASKS,
    FAST_BUDGET,
    Budget,
    Cell,
    cell_config,
    default_grid,
    fast_grid,
)
from spaedge.experiment.report import report, reported
from spaedge.experiment.run import check_budget, chosen_rates, load_results, run_cell, run_grid

__all__ = [
    "Cell",
    "Budget",
    "FAST_BUDGET",
    "DEFAULT_TASKS",
    "DEFAULT_LRS",
    "default_grid",
    "fast_grid",
    "cell_config",
    "run_cell",
    "run_grid",
    "load_results",
    "chosen_rates",
    "check_budget",
    "report",
    "reported",
]

"""Pretraining a base network (``spaedge pretrain``).

The built-in base (``tiny``) is pretrained on Fashion-MNIST classes 0-5
(T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal). Classes 6-9 and the
digits are never seen by the base, so the downstream tasks test transfer to
new data. The weights ship as ``spaedge/models/weights/spaedge_tiny.safetensors``;
this module is how they were made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save

from spaedge.models import BASES
from spaedge.pack.format import atomic_write_bytes
from spaedge.progress import Reporter
from spaedge.tasks import first_items, get_task
from spaedge.train.loops import evaluate, fit

__all__ = ["PRETRAIN_TASK", "pretrain"]

PRETRAIN_TASK = "fashion_mnist:0,1,2,3,4,5"


def pretrain(out: str | Path, *, base: str = "tiny", task: str = PRETRAIN_TASK, data_dir: Optional[str] = None,
             epochs: int = 6, lr: float = 2e-3, batch_size: int = 128, seed: int = 0, train_limit: int = 0,
             reporter: Optional[Reporter] = None) -> dict:
    """Train every weight of a fresh ``base`` on ``task`` (its first ``train_limit``
    training images, 0: all); write ``out`` (safetensors)."""
    reporter = reporter or Reporter(enabled=False)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t = get_task(task, data_dir=data_dir)
    model = BASES[base]()
    model.replace_head(t.num_classes)
    t0 = time.time()
    fit(model, first_items(t.split("train"), train_limit), epochs, lr=lr, batch_size=batch_size, weight_decay=5e-4,
        generator=gen, reporter=reporter, description="pretrain")
    result = {"task": t.name, "epochs": epochs, "seed": seed, "val_accuracy": evaluate(model, t.split("val")),
              "test_accuracy": evaluate(model, t.split("test")), "seconds": round(time.time() - t0, 1)}
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    meta = {"spaedge_pretrain": json.dumps(result)}
    atomic_write_bytes(out, save(state, metadata=meta))
    reporter.log(f"pretrained {base} on {t.name}: test accuracy {result['test_accuracy']:.2%} "
                 f"({result['seconds']} s) -> {out}")
    return result

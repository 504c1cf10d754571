"""Where training runs (spaedge.train.device): devices that are not there are
one clear error; mixed precision and loader processes take the same code
path on the CPU that a GPU run takes (no GPU here: CUDA and MPS themselves
cannot be exercised), and loader processes do not change the data."""

from __future__ import annotations

import math

import pytest
import torch
from _toolchain_helpers import tiny_image_folder, tiny_task_model

from spaedge.tasks import batches, get_task
from spaedge.train import fit
from spaedge.train.device import TrainEnv, resolve_device, resolve_precision, use_onednn


def test_devices_that_are_not_there_are_refused_clearly():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="is not a device"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp8", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_precision("fp16", torch.device("cpu")) == torch.float16


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_cpu_path(tmp_path, precision):
    task = get_task(f"imagefolder:{tiny_image_folder(tmp_path / 'imgs')}")
    model = tiny_task_model("splora", rank=2, classes=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = fit(
        model,
        task.split("train"),
        1,
        lr=1e-2,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
        env=TrainEnv(device="cpu", precision=precision),
    )
    assert math.isfinite(loss)
    changed = [
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert changed and all(
        p.dtype == torch.float32 for p in model.parameters()
    )  # weights stay fp32


def test_loader_processes_give_the_same_batches(tmp_path):
    task = get_task(f"imagefolder:{tiny_image_folder(tmp_path / 'imgs')}")
    ds = task.split("train", augment=True)  # flips drawn from torch's global RNG

    def run(workers):
        torch.manual_seed(3)
        g = torch.Generator().manual_seed(7)
        out = [b for b in batches(ds, 10, shuffle=True, generator=g, workers=workers)]
        return out, torch.get_rng_state(), g.get_state()

    (a, rng_a, g_a), (b, rng_b, g_b) = run(0), run(2)
    assert len(a) == len(b) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(rng_a, rng_b) and torch.equal(
        g_a, g_b
    )  # a checkpoint after the epoch is the same too


def test_onednn_only_while_the_model_is_unpruned():
    from spaedge.pruning.prune import prune_to_density

    model = tiny_task_model("splora", rank=2)
    assert use_onednn(model, torch.device("cpu"))
    prune_to_density(model, torch.zeros(1, 1, 28, 28), 0.7, step_fraction=0.2)
    assert not use_onednn(model, torch.device("cpu"))

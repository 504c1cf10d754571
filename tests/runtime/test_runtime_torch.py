"""The C++ runtime against the torch toolchain: bundles written by spaedge.pack
from real adapted, pruned models must run to the same logits as the torch model.

Skipped where torch or the toolchain is not installed (a device install).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import spaedge.adapters as adapters
import spaedge.models as models
import spaedge.pack.bundle as pack
import spaedge.pruning.prune as pruning
import spaedge.runtime as runtime
from spaedge.bench.synthetic import randomise_task_model  # noqa: E402


def _randomise(model, seed: int) -> None:
    """Non-trivial adapters, BatchNorm statistics and head, as training would leave them."""
    randomise_task_model(model, torch.Generator().manual_seed(seed), scale=0.2, bn_scale=0.2)


CONFIGS = {
    "basic-imagenet": {
        "arch": "t-basic",
        "block": "BasicBlock",
        "layers": [1, 1, 1, 1],
        "widths": [16, 24, 32, 40],
        "in_channels": 3,
        "stem": "imagenet",
    },
    "bottleneck-cifar": {
        "arch": "t-bottleneck",
        "block": "Bottleneck",
        "layers": [1, 1, 1, 1],
        "widths": [8, 12, 16, 20],
        "in_channels": 3,
        "stem": "cifar",
    },
}


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("method,density", [("splora", 0.5), ("finetune", 0.4), ("splora", 1.0)])
def test_packed_task_runs_like_the_torch_model(tmp_path, cfg, method, density):
    torch.manual_seed(0)
    base = models.from_config(CONFIGS[cfg], num_classes=6).eval()
    _randomise(base, 1)
    base_hash = pack.write_base(base, tmp_path / "base.safetensors")

    model = adapters.adapt(copy.deepcopy(base), method, rank=4)
    _randomise(model, 2)
    if method == "finetune":
        with torch.no_grad():
            for m in adapters.adapted_layers(model).values():
                m.weight.add_(0.05 * torch.randn_like(m.weight))
    size = (3, 40, 36)
    if density < 1.0:
        pruning.prune_to_density(model, torch.randn(1, *size), density)
    spec = pack.TaskSpec("t", [f"c{i}" for i in range(6)], size, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    pack.write_task(model, spec, base_hash, tmp_path / "task.safetensors")

    model.eval()
    x = torch.randn(3, *size)
    with torch.no_grad():
        want = model(x).double().numpy()
    rt = runtime.Runtime(tmp_path / "base.safetensors", threads=1)
    assert rt.load_task(tmp_path / "task.safetensors") == "t"
    for mode in ("merged", "lowrank"):
        rt.mode = mode
        got = rt.run(x.numpy())
        err = float(np.max(np.abs(got - want)))
        assert err <= 1e-4 * (1 + float(np.max(np.abs(want)))), (mode, err)

"""The C++ runtime against the torch toolchain: bundles written by spaedge.pack
from real adapted, pruned models must run to the same logits as the torch model.

Skipped where torch or the toolchain is not installed (a device install).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
runtime = pytest.importorskip("spaedge.runtime", reason="compiled spaedge._runtime not built")
models = pytest.importorskip("spaedge.models")
adapters = pytest.importorskip("spaedge.adapters")
pack = pytest.importorskip("spaedge.pack.bundle")
pruning = pytest.importorskip("spaedge.pruning.prune")


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        for name, p in model.named_parameters():
            if "lora" in name or name.startswith("fc."):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


CONFIGS = {
    "basic-imagenet": {"arch": "t-basic", "block": "BasicBlock", "layers": [1, 1, 1, 1],
                       "widths": [16, 24, 32, 40], "in_channels": 3, "stem": "imagenet"},
    "bottleneck-cifar": {"arch": "t-bottleneck", "block": "Bottleneck", "layers": [1, 1, 1, 1],
                         "widths": [8, 12, 16, 20], "in_channels": 3, "stem": "cifar"},
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

"""Small helpers shared by the toolchain tests (pytest puts tests/ on sys.path
through tests/conftest.py)."""

from __future__ import annotations

import numpy as np


def tiny_image_folder(root):
    """A two-class image folder (bright vs dark 28x28 squares) with train/val/test
    splits: a real task for the whole pipeline that trains in seconds."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        for c, level in (("bright", 200), ("dark", 60)):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(rng.normal(level, 40, (28, 28)), 0, 255).astype(np.uint8)
                Image.fromarray(a, "L").save(d / f"{i}.png")
    return root


def train_steps(model, data, steps: int = 3, lr: float = 1e-2) -> None:
    """A few Adam steps over fixed (images, labels) batches, cycling; leaves the model in eval mode."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for i in range(steps):
        x, y = data[i % len(data)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def tiny_task_model(method: str = "splora", rank: int = 4, classes: int = 3, seed: int = 0):
    """The built-in base with a fresh ``classes``-way head, adapted with ``method`` (seeded)."""
    import torch

    from spaedge.adapters import adapt
    from spaedge.models import get_base

    torch.manual_seed(seed)
    base = get_base("tiny")
    base.replace_head(classes)
    return adapt(base, method, rank=rank)


def random_batches(n: int = 2, bs: int = 16, classes: int = 3, seed: int = 0) -> list:
    """``n`` fixed (images, labels) batches of random 1x28x28 images."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(bs, 1, 28, 28, generator=g), torch.randint(0, classes, (bs,), generator=g))
        for _ in range(n)
    ]


def assert_bundle_matches(model, base_path, task_path, x) -> None:
    """The packed task against the torch ``model`` on inputs ``x``: the torch model
    rebuilt from the bundles within 1e-4, the C++ runtime (merged and low-rank
    modes) within 1e-3 of the logits' scale (1 + max |logit|), same top-1."""
    import numpy as np
    import torch

    from spaedge import runtime
    from spaedge.pack.bundle import load_task_model

    with torch.no_grad():
        want = model(x).numpy()
        again, _, _ = load_task_model(base_path, task_path)
        np.testing.assert_allclose(
            again(x).numpy(), want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max())
        )
    rt = runtime.Runtime(base_path, threads=1)
    rt.load_task(task_path)
    for mode in ("merged", "lowrank"):
        rt.mode = mode
        got = rt.run(x.numpy())
        assert float(np.abs(got - want).max()) <= 1e-3 * (1 + float(np.abs(want).max())), mode
        assert (got.argmax(1) == want.argmax(1)).all(), mode


# The child runs `spaedge train` with its checkpoint writer patched to stop the
# process (SIGSTOP) right after the first checkpoint is complete: the parent
# sees it stopped, sends SIGINT, then SIGCONT. The interrupt lands mid-run by
# construction, however fast or slow the machine.
STOP_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
# A process started in the background by a non-interactive shell inherits SIGINT
# ignored, and Python then installs no handler: Ctrl-C's handler, explicitly.
signal.signal(signal.SIGINT, signal.default_int_handler)
from spaedge.train import checkpoint
real = checkpoint.save
def save(*args, **kw):
    real(*args, **kw)
    if not save.stopped:
        save.stopped = True
        os.kill(os.getpid(), signal.SIGSTOP)
save.stopped = False
checkpoint.save = save
from spaedge.cli import main
sys.exit(main(sys.argv[1:]))
"""


class StopRun(Exception):
    """Raised by ``run_stopped_in_final`` after a checkpoint is on disk."""


def run_stopped_in_final(cfg, directory, monkeypatch, finals: int = 1) -> None:
    """Run ``cfg`` into ``directory`` and stop it right after its ``finals``-th
    checkpoint of the final phase is written (by construction, not by timing),
    as an interrupt there would; the checkpoint code is restored afterwards."""
    import pytest

    from spaedge.train import checkpoint, run

    real, phases = checkpoint.save, []

    def save_then_stop(path, **kw):
        real(path, **kw)
        phases.append(kw["position"].phase)
        if phases.count("final") == finals:
            raise StopRun()

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(StopRun):
        run(cfg, directory)
    monkeypatch.setattr(checkpoint, "save", real)

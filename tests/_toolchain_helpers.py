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

"""Batches of a task split: in order, shuffled, a fixed subset, or the few
fixed batches data-driven criteria score on."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Callable, Optional

import torch

__all__ = ["batches", "first_items", "score_batches"]

# select(global batch positions) -> this process's share, or None to skip the batch
Select = Callable[[list[int]], Optional[list[int]]]


def _order(n: int, batch_size: int, shuffle: bool, generator, select) -> Iterator[list[int]]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size].tolist()
        if select is not None:
            idx = select(idx)
            if idx is None:
                continue
        yield idx


class _Plan:
    """The batches of one pass as (positions, flips), drawn in the training
    process: loader processes only decode, so the data, its order and its
    augmentation are those of an in-process pass."""

    def __init__(self, dataset, order):
        self.dataset, self.order = dataset, order

    def __iter__(self):
        flips = getattr(self.dataset, "flips", None)
        for idx in self.order:
            yield idx, flips(len(idx)) if flips is not None else None


class _Decode(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, item):
        idx, flips = item
        return self.dataset.batch(idx, flips=flips)


def batches(
    dataset,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    select: Select | None = None,
    workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches of a task split, in order or shuffled.

    ``select`` takes each batch's positions and returns the part to load, or
    None to skip the batch (data-parallel training takes its share of every
    batch this way: ``spaedge.train.distributed.share``). ``workers`` > 0
    decodes batches in that many processes (a torch DataLoader) ahead of
    training; the batches are the same as in-process."""
    order = _order(len(dataset), batch_size, shuffle, generator, select)
    fetch = getattr(dataset, "batch", None)
    if workers > 0 and fetch is not None:
        # Its own generator: the loader seeds its processes from it, not from torch's
        # global RNG, whose draws (the flips) must be those of an in-process pass.
        loader = torch.utils.data.DataLoader(
            _Decode(dataset),
            sampler=_Plan(dataset, order),
            batch_size=None,
            num_workers=workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(0),
        )
        yield from loader
        return
    for idx in order:
        if fetch is not None:
            yield fetch(idx)
        else:
            items = [dataset[i] for i in idx]
            yield torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def first_items(dataset, n: int):
    """The first ``n`` items of a task split (a fixed subset: splits are class-mixed); all for n <= 0."""
    if n <= 0 or n >= len(dataset):
        return dataset
    sub = copy.copy(dataset)
    sub.indices, sub.targets = dataset.indices[:n], dataset.targets[:n]
    return sub


def score_batches(dataset, n_batches: int = 4, batch_size: int = 64, seed: int = 0) -> list:
    """A few fixed (images, labels) batches of a split for data-driven criteria."""
    g = torch.Generator().manual_seed(seed + 7919)
    out = []
    for b in batches(dataset, batch_size, shuffle=True, generator=g):
        out.append(b)
        if len(out) >= n_batches:
            break
    return out

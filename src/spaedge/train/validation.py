"""Validation during training: the accuracy curve, and early stopping.

``Validation.hook(phase, step)`` gives ``fit`` a function it calls after
every epoch; it evaluates the validation split when a curve is recorded or
when early stopping watches the final phase. Early stopping (``patience`` > 0,
final phase only) keeps the model of the best validation epoch, stops after
``patience`` epochs without a better one, and puts the best model back when
the phase ends. Its state (best accuracy, epochs since, the best model) is
saved with every checkpoint, so a resumed run stops where and as an
uninterrupted one would. Nothing here looks at the test split.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from spaedge.train.device import TrainEnv
from spaedge.train.loops import evaluate

__all__ = ["Validation"]


class Validation:
    def __init__(
        self,
        model: nn.Module,
        val_ds,
        *,
        env: TrainEnv | None = None,
        patience: int = 0,
        curve: bool = False,
        session=None,
    ):
        self.model, self.val_ds, self.env = model, val_ds, env
        self.patience, self.curve, self.session = patience, curve, session
        self.history: list[dict] = []
        self.best, self.stale = -1.0, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        ck = session.ck if session is not None else None
        if ck is not None and ck.extra.get("validation"):
            v = ck.extra["validation"]
            self.history, self.best, self.stale = v["history"], v["best"], v["stale"]
            best = {
                k[len("best.") :]: t for k, t in ck.extra_tensors.items() if k.startswith("best.")
            }
            self.best_state = best or None

    def hook(self, phase: str, step: int = 0) -> Callable[[int, float], bool] | None:
        """For ``fit(on_epoch=...)``: None when nothing is to be measured in this phase."""
        watch = self.patience > 0 and phase == "final"
        if not (self.curve or watch):
            return None

        def on_epoch(epoch: int, loss: float) -> bool:
            acc = evaluate(self.model, self.val_ds, env=self.env)
            self.history.append(
                {"phase": phase, "step": step, "epoch": epoch, "loss": loss, "val_accuracy": acc}
            )
            stop = False
            if watch:
                if acc > self.best:
                    self.best, self.stale = acc, 0
                    self.best_state = {
                        k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                    }
                else:
                    self.stale += 1
                stop = self.stale >= self.patience
            self._remember()
            return stop

        return on_epoch

    def _remember(self) -> None:
        if self.session is None:
            return
        self.session.extra["validation"] = {
            "history": self.history,
            "best": self.best,
            "stale": self.stale,
        }
        self.session.extra_tensors = {f"best.{k}": v for k, v in (self.best_state or {}).items()}

    def finish(self) -> float | None:
        """After the final phase: the best epoch's model back in place (early
        stopping); returns its validation accuracy (None without early stopping)."""
        if self.patience <= 0 or self.best_state is None:
            return None
        self.model.load_state_dict(self.best_state)
        return self.best

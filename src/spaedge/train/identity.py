"""A run's identity is its content, not its spelling.

Besides the config (compared field by field where it is stored), a run
records ``run_identity``: the content hash of the base weights it actually
loaded (``spaedge.pack.bundle.base_hash``, not the path of a weights file)
and the identity of its task's data (``spaedge.tasks.identity``: resolved
absolute paths plus file digests or a file-list fingerprint). A checkpoint
(resume), a finished run directory (``spaedge pack``'s run matching) and
every result of ``spaedge experiment`` carry it, and each refuses to be
continued or reused under another identity, naming what differs.
"""

from __future__ import annotations

from spaedge.tasks import Task, data_identity, get_task
from spaedge.train.config import TrainConfig

__all__ = ["run_identity", "identity_of", "differences"]


def run_identity(task: Task, base_hash: str) -> dict:
    return {"base_hash": base_hash, "data": data_identity(task)}


def identity_of(cfg: TrainConfig) -> dict:
    """The identity a run of ``cfg`` would have now (cfg resolved: no base ``auto``)."""
    from spaedge.pack.bundle import base_hash
    from spaedge.train.setup import load_base

    return run_identity(get_task(cfg.task, data_dir=cfg.data_dir), base_hash(load_base(cfg)))


def _short(digest: str | None) -> str:
    return "none" if not digest else digest.removeprefix("sha256:")[:12]


def differences(had: dict | None, want: dict) -> list[str]:
    """What differs between a stored identity and the current one, in words
    (empty if they are the same)."""
    if not isinstance(had, dict):
        return ["it records no base weights or data identity (made by an older spaedge)"]
    out = []
    if had.get("base_hash") != want.get("base_hash"):
        out.append(
            f"base weights {_short(had.get('base_hash'))} there, "
            f"{_short(want.get('base_hash'))} now (the weights loaded, not their path)"
        )
    hd, wd = had.get("data") or {}, want.get("data") or {}
    if hd != wd:
        hs, ws = hd.get("sources") or [], wd.get("sources") or []
        hp, wp = [s.get("path") for s in hs], [s.get("path") for s in ws]
        if hd.get("task") != wd.get("task"):
            out.append(f"task data {hd.get('task')!r} there, {wd.get('task')!r} now")
        elif hp != wp:
            out.append(
                f"data {', '.join(map(str, hp)) or 'built in'} there, "
                f"{', '.join(map(str, wp)) or 'built in'} now"
            )
        else:
            changed = [w.get("path") for h, w in zip(hs, ws) if h != w]
            out.append(f"the data in {', '.join(changed)} changed since (files, sizes or times)")
    return out

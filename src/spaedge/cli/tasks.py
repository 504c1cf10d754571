"""``spaedge tasks``: the tasks spaedge knows."""

from __future__ import annotations


def add_parser(sub) -> None:
    ts = sub.add_parser("tasks", help="list the known tasks")
    ts.set_defaults(func=main)


def main(args) -> int:
    from spaedge.tasks import task_descriptions

    for name, desc in task_descriptions().items():
        print(f"  {name:<18} {desc}")
    return 0

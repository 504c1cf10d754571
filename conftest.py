"""`pytest --benchmark-only` at the repository root runs the benchmark suite.

pyproject.toml's ``testpaths`` is ``tests``: plain ``pytest`` collects only the
tests, and never imports, collects or times anything in ``benchmarks/``. When
``--benchmark-only`` is given and no path is named (pytest fell back to
``testpaths``), collection is switched to ``benchmarks/`` instead: the tests
would all be skipped by that flag anyway, and listing 543 skips would bury the
tables. Naming paths (``pytest benchmarks --benchmark-only``, ``pytest tests
...`` as .ci/run does) is left as typed, and so is ``--benchmark-skip``.

tests/bench/test_benchmark_collection.py checks both spellings by collecting.
"""

from __future__ import annotations

import pytest

BENCHMARKS = "benchmarks"


def _benchmarks_asked_for(config: pytest.Config) -> bool:
    return (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and bool(config.getoption("benchmark_only", default=False))
        and (config.rootpath / BENCHMARKS).is_dir()
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if _benchmarks_asked_for(config):
        config.args[:] = [str(config.rootpath / BENCHMARKS)]
        # The header would say "testpaths: tests"; pytest_report_header says what runs.
        config.args_source = pytest.Config.ArgsSource.ARGS
        config._spaedge_benchmarks_from_root = True


def pytest_report_header(config: pytest.Config) -> str | None:
    if getattr(config, "_spaedge_benchmarks_from_root", False):
        return f"--benchmark-only without a path: collecting {BENCHMARKS}/ (see conftest.py)"
    return None

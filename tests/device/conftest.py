"""The device-side tests' fixtures: made here with torch (x86), or read from
SPAEDGE_DEVICE_FIXTURES (made on x86 by make_fixtures.py, then read under qemu
on aarch64, where there is no torch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> Path:
    given = os.environ.get("SPAEDGE_DEVICE_FIXTURES")
    if given:
        return Path(given)
    sys.path.insert(0, str(Path(__file__).parent))
    from make_fixtures import make

    return make(tmp_path_factory.mktemp("device"))

"""Shared test settings.

Tests never contact any host but 127.0.0.1: SPAEDGE_MIRROR points every
download at a closed loopback port unless a test serves the files itself.

What is tested is the installed package with its compiled runtime: if
``spaedge._runtime`` does not import, the run stops at once with what to do
(the runtime's tests never skip in silence). With the ``src/`` layout a
checkout's sources cannot shadow the installed package.

Tests run on small shared machines (CI has 2 cores and other jobs beside it):
torch's intra-op pool at its default size oversubscribes the cores and makes
the training tests many times slower, with no gain on these tiny models. One
torch thread is set here, before any test module imports torch; subprocesses
(the `spaedge` CLI tests) inherit OMP_NUM_THREADS. The C++ runtime does not
use OpenMP; its tests pass an explicit thread count.
"""

import os
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reaches the network or the user's cache: spaedge's cache is a fresh
# directory, and every download goes to a closed loopback port unless a test
# serves the files itself (tests/_mirror.py). Subprocesses inherit both.
os.environ["SPAEDGE_HOME"] = tempfile.mkdtemp(prefix="spaedge-test-home-")
os.environ.pop("SPAEDGE_DATA", None)
os.environ["SPAEDGE_MIRROR"] = "http://127.0.0.1:9"
os.environ.pop("SPAEDGE_CHECKSUMS", None)


def pytest_configure(config):
    try:
        import spaedge._runtime  # noqa: F401
    except ImportError as e:
        raise pytest.UsageError(
            f"spaedge's compiled runtime does not import ({e}). Install the package first "
            "(pip install -e '.[test]' torch==2.13.0, or bash .ci/run) and run pytest from the checkout."
        ) from None
    try:
        import torch
    except ImportError:  # the device-side tests (runtime, corruption) run without torch
        pass
    else:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base_bundle(tmp_path_factory):
    """The built-in base written as a base bundle (for tests that pack tasks on it)."""
    from spaedge.models import get_base
    from spaedge.pack.bundle import write_base

    path = tmp_path_factory.mktemp("tiny-base") / "base.safetensors"
    write_base(get_base("tiny"), path)
    return path

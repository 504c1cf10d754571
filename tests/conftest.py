"""Shared test settings.

Tests run on small shared machines (CI has 2 cores and other jobs beside it):
torch's intra-op pool at its default size oversubscribes the cores and makes
the training tests many times slower, with no gain on these tiny models. One
torch thread is set here, before any test module imports torch; subprocesses
(the `spaedge` CLI tests) inherit OMP_NUM_THREADS. The C++ runtime does not
use OpenMP; its tests pass an explicit thread count.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch
except ImportError:  # the device-side tests run without torch
    pass
else:
    torch.set_num_threads(1)

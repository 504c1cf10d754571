"""spaedge: one frozen vision base on the device, every task a tiny bundle.

The device side (`spaedge.Runtime`) needs only numpy and the compiled
extension; the toolchain (training, pruning, packing) imports torch lazily.
"""

import warnings as _warnings

__version__ = "0.1.0"

# The toolchain turns oneDNN off around every backward (see spaedge.train.fit);
# torch 2.13 then prints a notice about Intel-GPU TF32 each time, which says
# nothing about the user's run and buried the progress lines.
_warnings.filterwarnings(
    "ignore", message="TF32 acceleration on top of oneDNN", category=UserWarning
)


def __getattr__(name):
    # Lazy so `import spaedge` stays cheap and never needs torch.
    if name == "Runtime":
        from spaedge.runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'spaedge' has no attribute {name!r}")

"""spaedge: one frozen vision base on the device, every task a tiny bundle.

The device side (`spaedge.Runtime`) needs only numpy and the compiled
extension; the toolchain (training, pruning, packing) imports torch lazily.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so `import spaedge` stays cheap and never needs torch.
    if name == "Runtime":
        from spaedge.runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'spaedge' has no attribute {name!r}")

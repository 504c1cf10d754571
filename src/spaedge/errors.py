"""Errors shared by the toolchain and the device side (no torch import)."""


class BundleError(ValueError):
    """A bundle file is missing, corrupt, or does not fit the loaded base.

    The message names the file and the field, and says what to do."""

"""Errors shared by the toolchain and the device side (no torch import)."""


class BundleError(ValueError):
    """A bundle file is missing, corrupt, or does not fit the loaded base.

    The message names the file and the field, and says what to do."""


class SparseTensorError(ValueError):
    """A layer's sparse tensors (values + bitmask, ``spaedge.adapters.bitmask``)
    break a format rule. ``template`` names the layer's tensors as ``{0}``,
    ``{1}``... (``names``, layer-local), so the bundle reader can say which
    conv's tensors they are (``message(prefix)``)."""

    def __init__(self, template: str, *names: str):
        self.template, self.names = template, names
        super().__init__(self.message())

    def message(self, prefix: str = "") -> str:
        return self.template.format(*(f"'{prefix}{n}'" for n in self.names))

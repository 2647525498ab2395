"""Errors the encoder raises for user mistakes: caught by the CLI and shown as one clear line."""


from modernretrieval.errors import ModernRetrievalError


class ModelLoadError(ModernRetrievalError, ValueError):
    """A checkpoint cannot be loaded: missing file, wrong architecture, bad shapes, unreachable hub."""

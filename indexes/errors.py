"""What an index reports to its caller: a mistake in the input, a damaged folder, or a busy writer."""


class IndexInputError(ValueError):
    """Bad input: wrong dimensions, NaN/inf values, duplicate or unknown ids, a malformed filter."""


class IndexCorruptError(RuntimeError):
    """An index folder that is damaged (truncated or altered file, unreadable database) or not an index at all."""


class IndexBusyError(RuntimeError):
    """Another process holds the write lock of this index."""

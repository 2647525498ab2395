"""What an index reports to its caller: a mistake in the input, a damaged folder, or a busy writer."""


from modernretrieval.errors import ModernRetrievalError


class IndexInputError(ModernRetrievalError, ValueError):
    """Bad input: wrong dimensions, NaN/inf values, duplicate or unknown ids, a malformed filter."""


class IndexCorruptError(ModernRetrievalError, RuntimeError):
    """An index folder that is damaged (truncated or altered file, unreadable database) or not an index at all."""


class IndexBusyError(ModernRetrievalError, RuntimeError):
    """Another process holds the write lock of this index."""

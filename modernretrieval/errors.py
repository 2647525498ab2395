"""The root of every error modernretrieval raises for something its user can fix.

Each layer raises its own subclasses (a checkpoint that cannot be loaded, a damaged index, a missing dataset file,
a setting out of range); the command line catches this root alone, in one place, and turns it into one line and exit
code 2. Anything else is a bug and keeps its traceback."""


class ModernRetrievalError(Exception):
    """A mistake in the input, the settings, the files or the environment that the user can fix."""


class SettingsError(ModernRetrievalError, ValueError):
    """A setting out of its range or contradicting another (a ValueError too, as callers have caught until now)."""

"""Errors a user can act on.

Each carries one line that names the file, line, column, flag or field at fault
and what was expected. The command line prints ``fedtext: error: <line>`` and
exits 2 instead of a traceback.
"""


class FedTextError(Exception):
    """A problem with the user's input, described in one line."""


class ConfigError(FedTextError):
    """A config value (flag, run-config key, pyproject default) is invalid."""


class DataError(FedTextError):
    """A data file cannot be used: missing, empty, wrong columns, bad labels..."""

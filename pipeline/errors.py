"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (config, paths, data): says what, where and how to fix.

    The CLI prints ``error: <message>`` on one line and exits with code 2, no traceback.
    Raise it *before* writing anything, so that existing outputs stay untouched.
    """

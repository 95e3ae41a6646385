"""The exception types the CLI turns into one `error:` line: bad input and damaged sets (exit 2),
a failed job (exit 1)."""


class UserError(Exception):
    """Bad input from the user (config, paths, data): says what, where and how to fix.

    The CLI prints ``error: <message>`` on one line and exits with code 2, no traceback.
    Raise it *before* writing anything, so that existing outputs stay untouched.
    """


class JobFailure(Exception):
    """A job that the environment failed, not the input: the cluster kept losing nodes, the
    execution kept stalling. Says what happened and how to resume; the CLI exits with code 1.
    """


class FormatError(ValueError):
    """A shard, index or manifest that does not follow the shard contract (:mod:`core.records.format`)."""


class RecordError(FormatError):
    """One record of a column decoded at once that does not decode: ``row`` says which, so the
    reader can name that sample's own key (not just its shard)."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = int(row)


SHOWN_CHARS = 200  # of a value echoed in an error line


def clip(text: object, limit: int = SHOWN_CHARS) -> str:
    """``text`` (``str()`` of it) cut to ``limit`` characters with the length left out said: an
    error line echoes what the user gave, and a 50 MB value must not become a 50 MB line."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"

"""The one exception type for bad input: the CLI prints its message and exits 2, no traceback."""


class CnnbenchError(Exception):
    """A problem the user can fix. The message names the problem and the fix, in one paragraph."""

    exit_code = 2

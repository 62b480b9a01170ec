"""The exceptions the CLI turns into a message and an exit status, without a traceback."""


class CnnbenchError(Exception):
    """A problem the user can fix. The message names the problem and the fix, in one paragraph."""

    exit_code = 2


class RunFailed(CnnbenchError):
    """A run that started and could not finish (divergence, out of memory): its results.json says
    why; the CLI prints the message and exits 1."""

    exit_code = 1


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after it saved its state; the exit status is 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

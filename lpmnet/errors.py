"""Errors that the command line reports as one clear line (no traceback)."""


class LPMNetError(Exception):
    """Base class of the errors the project raises on purpose."""


class InputError(LPMNetError):
    """Bad user input: the message names the file (or value) and the problem."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BackendUnavailableError(LPMNetError):
    """A compute backend was asked for explicitly but cannot run here."""

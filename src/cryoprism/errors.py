"""Errors a user can act on. The CLI turns them into one line on stderr and exit code 2."""


class InputError(ValueError):
    """Bad input: a missing or malformed file, an inconsistent table, an unknown pixel size...

    The message should name the file (and line or row where known) and say what was expected.
    """

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)

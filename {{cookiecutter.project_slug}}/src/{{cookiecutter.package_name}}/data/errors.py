"""The data stage's one error type: the CLI prints its message (`file:line: what`) and exits 2."""


class DataError(ValueError):
    """Invalid training data. The CLI prints the message and exits with code 2."""

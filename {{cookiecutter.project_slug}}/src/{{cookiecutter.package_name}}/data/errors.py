"""The data stage's one error type: the CLI prints its message (`file:line: what`) and exits 2."""

import json


class DataError(ValueError):
    """Invalid training data. The CLI prints the message and exits with code 2."""


def json_problem(err: json.JSONDecodeError) -> str:
    """`what at column N` for a JSON error. Some of Python's messages already end with "at"
    ("Unterminated string starting at", "Invalid control character at"): not said twice."""
    return f"{err.msg.removesuffix(' at')} at column {err.colno}"

"""Errors that reach the user as one line and a non-zero exit code."""


class UserError(Exception):
    """Bad usage or bad input: the message names the file or key and what was expected. Exit code 2."""

    exit_code = 2

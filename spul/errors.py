"""Errors a user can fix, shared by every package: the CLI prints them as one line, exit code 2."""


class UserError(Exception):
    """A problem the user can fix (bad path, bad input); printed as one line, exit code 2."""

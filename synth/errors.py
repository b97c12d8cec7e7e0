"""The one exception type for problems the user can fix (bad input, missing files)."""


class UserError(Exception):
    """A user-facing problem; the CLI prints its message as one line and exits with status 2."""

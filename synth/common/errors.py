"""The one exception type for problems the user can fix (bad input, missing files)."""


class UserError(Exception):
    """A user-facing problem; the CLI prints its message as one line and exits with status 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty (e.g. EOFError())."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

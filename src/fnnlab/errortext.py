"""An error in one line, for a printed message, a log line or a run's tag.

A database error's text goes on with its SQL and parameters, a server's with its response:
the first line says what went wrong. No imports, so every part can use it.
"""


def reason(exc: BaseException) -> str:
    """The first line of the error's message (MLflow's without its error code), or its
    type's name when it has none."""
    text = str(getattr(exc, "message", exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def first_line(exc: BaseException) -> str:
    """The error's type and reason, at most 300 characters (a tag, a log line)."""
    text = reason(exc)
    name = type(exc).__name__
    return (name if text == name else f"{name}: {text}")[:300]

"""User-facing errors: one line that names the problem and the fix, printed without a traceback."""


class UserError(Exception):
    """A problem with the user's input (config, data, command line), not a bug in this package.

    The CLI prints ``error: <message>`` and exits with status 2. Messages are one line and say
    what is wrong *and* what to do about it.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def close_matches(name: str, known, n: int = 3) -> str:
    """``" (did you mean X?)"`` for a misspelt name, or ``""``."""
    import difflib

    hits = difflib.get_close_matches(str(name), [str(k) for k in known], n=n, cutoff=0.6)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""

"""User-facing errors: one line that names the problem and the fix, printed without a traceback."""


class UserError(Exception):
    """A problem with the user's input (config, data, command line), not a bug in this package.

    The CLI prints ``error: <message>`` and exits with status 2. Messages are one line and say
    what is wrong *and* what to do about it.
    """

    def __init__(self, message: str):
        super().__init__(printable(" ".join(_cut(word) for word in str(message).split())))


WORD_LIMIT = 240  # a longer word of a message is cut in the middle: a value nobody cut where it was echoed


def _cut(word: str) -> str:
    return word if len(word) <= WORD_LIMIT else f"{word[:WORD_LIMIT * 2 // 3]}...{word[-(WORD_LIMIT // 3):]}"


VALUE_LIMIT = 80  # characters of a value echoed in a message; longer ones are cut in the middle


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (``\\x1b``), so a message cannot move the
    cursor, ring the bell or split itself over lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def show_value(value, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)`` made printable and cut to ``limit`` characters (head ... tail), for echoing user input."""
    text = printable(repr(value))
    if len(text) <= limit:
        return text
    keep = max(limit - 5, 10)
    return f"{text[:keep * 2 // 3]} ... {text[-(keep - keep * 2 // 3):]}"


def close_matches(name: str, known, n: int = 3) -> str:
    """``" (did you mean X?)"`` for a misspelt name, or ``""``."""
    import difflib

    hits = difflib.get_close_matches(str(name), [str(k) for k in known], n=n, cutoff=0.6)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""

"""Exceptions shown to users as one clear line (the CLI prints them without a traceback)."""
import unicodedata


class MedreconError(Exception):
    """Base class: the message names the file or key and the fix. ``recorded``: the form that records (a batch's
    manifest.csv and index.html) keep, where it differs from what the console is told (``recorded_error``)."""

    def __init__(self, *args, recorded: str | None = None, lines: list[str] | None = None):
        super().__init__(*(args or ("\n".join(lines or []),)))
        self.recorded = recorded
        self.lines = lines  # a message of several problems, one a line (a config's): ``printed`` keeps the lines


class InputError(MedreconError):
    """Bad user input: a file, folder, key or value that cannot be used as given."""


class UnreadableError(InputError):
    """A file or DICOM folder with no image that can be read (damaged, truncated, not an image): a search over
    many, such as the training data's, may pass it over."""


def recorded_error(e: BaseException) -> str:
    """``e`` as a record (a manifest row's error) keeps it: its type and its ``recorded`` form where it has one (a
    listing of series without their SeriesDescriptions, which may name the patient), else its message."""
    return f"{type(e).__name__}: {getattr(e, 'recorded', None) or e}"


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (a newline as \\n, a tab as \\t, others as \\xNN): a path
    holding a newline, interpolated into a message, no longer breaks it over two lines."""
    return "".join({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\x{ord(c):02x}")
                   if unicodedata.category(c) == "Cc" or c in "\u2028\u2029" else c for c in text)


def printed(e: BaseException) -> str:
    """An error as the console prints it: one line (``one_line``), or, for a message of several problems
    (``MedreconError.lines``), one line each."""
    return "\n".join(map(one_line, getattr(e, "lines", None) or [str(e)]))

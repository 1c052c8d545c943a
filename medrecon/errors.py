"""Exceptions shown to users as one clear line (the CLI prints them without a traceback)."""


class MedreconError(Exception):
    """Base class: the message names the file or key and the fix. ``recorded``: the form that records (a batch's
    manifest.csv and index.html) keep, where it differs from what the console is told (``recorded_error``)."""

    def __init__(self, *args, recorded: str | None = None):
        super().__init__(*args)
        self.recorded = recorded


class InputError(MedreconError):
    """Bad user input: a file, folder, key or value that cannot be used as given."""


class UnreadableError(InputError):
    """A file or DICOM folder with no image that can be read (damaged, truncated, not an image): a search over
    many, such as the training data's, may pass it over."""


def recorded_error(e: BaseException) -> str:
    """``e`` as a record (a manifest row's error) keeps it: its type and its ``recorded`` form where it has one (a
    listing of series without their SeriesDescriptions, which may name the patient), else its message."""
    return f"{type(e).__name__}: {getattr(e, 'recorded', None) or e}"

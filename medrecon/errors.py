"""Exceptions shown to users as one clear line (the CLI prints them without a traceback)."""


class MedreconError(Exception):
    """Base class: the message names the file or key and the fix."""


class InputError(MedreconError):
    """Bad user input: a file, folder, key or value that cannot be used as given."""


class UnreadableError(InputError):
    """A file or DICOM folder with no image that can be read (damaged, truncated, not an image): a search over
    many, such as the training data's, may pass it over."""

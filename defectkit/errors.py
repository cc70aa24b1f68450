"""Exceptions that carry a message a user can act on."""


class DefectkitError(Exception):
    """Base class for errors defectkit reports to the user without a traceback."""


class DataError(DefectkitError):
    """A data root, image or annotation file is missing or malformed."""


class ImageDecodeError(DataError):
    """An input file could not be decoded as an image."""


class StateError(DefectkitError):
    """Saved stage state is missing, mismatched or has been tampered with."""


class OutputError(DefectkitError):
    """A results folder cannot be used as asked: it holds another run's results."""


class FolderLockedError(OutputError):
    """Another process is writing to the same results folder."""


class ExportError(DefectkitError):
    """An exported network is missing, stale, altered or differs from PyTorch beyond its tolerance."""


class ConfigError(DefectkitError, ValueError):
    """A config names something that does not exist or passes arguments it does not take."""

"""Errors that mean "bad input": the CLI prints them as one line and exits with status 2."""


class AelabError(Exception):
    """Base class for user-facing errors (bad data, bad options, bad files)."""


class DataError(AelabError):
    """A data file is missing, corrupt or does not match its checksum."""


class CheckpointError(AelabError):
    """A run folder or checkpoint cannot be used (wrong format, architecture or version)."""


class ConfigError(AelabError):
    """An option has an invalid value."""


class StorageError(AelabError):
    """A file could not be written (full disk, no permission); nothing half-written is left."""


class TrainingDiverged(Exception):
    """The loss became NaN or inf; the last good checkpoint is kept."""

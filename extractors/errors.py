"""Errors raised for the user, kept free of heavy imports so the CLI can catch them cheaply.

Every error a user can fix derives from :class:`QuerentError`; its message names the input
(slide, file, sheet row) and what to do. The CLI prints such an error as one line and exits 1;
anything else is a bug and keeps its traceback.
"""


class QuerentError(Exception):
    """A problem with the input or the setup; the message names it and the fix."""


class SlideError(QuerentError):
    """A slide cannot be opened or read, or lacks what a stage needs (e.g. its MPP)."""


class SlideDiscoveryError(QuerentError):
    """The slide folder or slide sheet cannot be turned into a list of slides."""


class WeightsError(QuerentError):
    """Encoder weights are missing or do not fit."""


class FileFormatError(QuerentError):
    """A coords, features, grid or GeoJSON file is unreadable or does not fit its use."""


class SettingsError(QuerentError, ValueError):
    """A setting (config key or command-line option) is out of range or unknown."""


class CohortError(QuerentError):
    """The cohort sheet, the splits or the features do not fit together."""

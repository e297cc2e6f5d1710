"""The exception hierarchy of zsds.

Every error names what it is about (a file, a header keyword, a configuration key, a
parameter), so an operator can act on it without reading code.
"""

from __future__ import annotations

__all__ = [
    "ZsdsError",
    "ConfigError",
    "InputDataError",
    "RawFormatError",
    "CalibrationNotFoundError",
    "NoWorkFound",
    "AlgorithmError",
]


class ZsdsError(Exception):
    """Base class of all zsds errors."""


class ConfigError(ZsdsError):
    """A configuration file or override is invalid; the message names the key."""


class InputDataError(ZsdsError):
    """An input file or table is unusable.

    Parameters
    ----------
    path : str
        The file concerned.
    reason : str
        What is wrong with it, naming the HDU or keyword where that applies.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class RawFormatError(InputDataError):
    """A raw camera file violates ``raw-camera-format.md``.

    Parameters
    ----------
    path : str
        The raw file.
    violations : list of str
        Every violation found, each naming the HDU and keyword.
    """

    def __init__(self, path: str, violations: list[str]):
        super().__init__(path, "; ".join(violations))
        self.violations = list(violations)


class CalibrationNotFoundError(ZsdsError):
    """No valid calibration product exists for what a stage needs."""


class NoWorkFound(ZsdsError):
    """Nothing to do (for example, no exposures of a night); not a failure."""


class AlgorithmError(ZsdsError):
    """A science algorithm could not produce a trustworthy result.

    Parameters
    ----------
    message : str
        What failed.
    **metadata
        Structured numbers explaining the failure (for example ``n_found=3, n_required=10``).
    """

    def __init__(self, message: str, **metadata):
        super().__init__(message)
        self.metadata = metadata

"""Image quality flags (``INFOBITS``) and the usability verdict (``STATUS``).

In the spirit of ZTF: every science image carries ``INFOBITS``, a bit mask of the quality
problems found, and ``STATUS`` (1 = good, 0 = unusable). An image is unusable when any flag
marked ``fatal`` is set; the other flags are warnings.

The registry :data:`QA_FLAGS` is the single definition of the bits; the thresholds are
parameters (:class:`QualityThresholds`), as are the nominal zero points used to judge clouds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["QAFlag", "QA_FLAGS", "QualityThresholds", "QualityStatus", "nominal_zero_point",
           "quality_status", "flag_names"]


@dataclass(frozen=True)
class QAFlag:
    """One quality bit: ``INFOBITS & (1 << bit)``."""

    name: str
    bit: int
    description: str
    fatal: bool = True

    @property
    def value(self) -> int:
        return 1 << self.bit


#: The quality bits, in bit order.
QA_FLAGS: tuple[QAFlag, ...] = (
    QAFlag("FEW_CALIBRATORS", 0, "fewer photometric calibrators than required"),
    QAFlag("LARGE_ZP_RMS", 1, "RMS of the calibrator residuals (MAGZPRMS) too large"),
    QAFlag("CLOUDY", 2, "zero point much fainter than nominal for the filter and airmass"),
    QAFlag("BAD_SEEING", 3, "seeing FWHM above the limit"),
    QAFlag("ASTROMETRY_FAILED", 4, "astrometric solution failed or too poor"),
    QAFlag("FEW_SOURCES", 5, "too few sources extracted"),
    QAFlag("SATURATION_HIGH", 6, "large fraction of saturated pixels", fatal=False),
    QAFlag("LARGE_ZP_UNC", 7, "zero-point uncertainty (MAGZPUNC) too large", fatal=False),
    QAFlag("ZP_FIT_FAILED", 8, "photometric calibration could not be fitted"),
)
_BY_NAME = {f.name: f for f in QA_FLAGS}


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of the quality checks (defaults after the ZTF/ESUP cuts).

    Attributes
    ----------
    min_calibrators : int
        Fewest calibrators (``NMATCHES``) accepted.
    max_zp_rms : float
        Largest ``MAGZPRMS``, mag.
    max_zp_unc : float
        Largest ``MAGZPUNC``, mag.
    max_zp_deficit : float
        Largest loss ``zp_nominal - zp`` before the image is cloudy, mag.
    max_seeing_arcsec : float
        Largest FWHM, arcsec.
    max_astrometry_rms_arcsec : float
        Largest astrometric residual RMS, arcsec.
    min_sources : int
        Fewest extracted sources.
    max_saturated_fraction : float
        Largest fraction of saturated pixels.
    """

    min_calibrators: int = 80
    max_zp_rms: float = 0.06
    max_zp_unc: float = 0.01
    max_zp_deficit: float = 0.4
    max_seeing_arcsec: float = 4.0
    max_astrometry_rms_arcsec: float = 0.5
    min_sources: int = 100
    max_saturated_fraction: float = 0.05


class QualityStatus(NamedTuple):
    """``(infobits, status, reasons)``: the bit mask, 1 = good / 0 = bad, and why."""

    infobits: int
    status: int
    reasons: list[str]


def nominal_zero_point(zp0: float, extinction: float, airmass: float) -> float:
    """Clear-sky zero point ``zp0 - extinction * airmass``, AB mag for 1 DN.

    Parameters
    ----------
    zp0 : float
        Zero point above the atmosphere for the filter (e.g. zg 26.55, zr 26.39, zi 25.95).
    extinction : float
        Extinction coefficient, mag per airmass (e.g. zg 0.18, zr 0.10, zi 0.06).
    airmass : float
    """
    return float(zp0 - extinction * airmass)


def _checks(m: dict, t: QualityThresholds):
    """(flag name, metric present, failed, reason) for every check whose metrics are given."""
    get = m.get
    yield ("ZP_FIT_FAILED", "zp_fit_failed" in m, bool(get("zp_fit_failed")),
           "photometric calibration failed")
    yield ("FEW_CALIBRATORS", "n_calibrators" in m,
           not get("n_calibrators", 0) >= t.min_calibrators,
           f"n_calibrators={get('n_calibrators')} < {t.min_calibrators}")
    yield ("LARGE_ZP_RMS", "zp_rms" in m, not get("zp_rms", 0.0) <= t.max_zp_rms,
           f"zp_rms={get('zp_rms')} > {t.max_zp_rms}")
    yield ("LARGE_ZP_UNC", "zp_unc" in m, not get("zp_unc", 0.0) <= t.max_zp_unc,
           f"zp_unc={get('zp_unc')} > {t.max_zp_unc}")
    deficit = get("zp_nominal", np.nan) - get("zp", np.nan)
    yield ("CLOUDY", "zp" in m and "zp_nominal" in m, not deficit <= t.max_zp_deficit,
           f"zp {get('zp')} is {deficit:.3f} mag below nominal {get('zp_nominal')}"
           f" (limit {t.max_zp_deficit})")
    yield ("BAD_SEEING", "seeing_arcsec" in m, not get("seeing_arcsec", 0.0) <= t.max_seeing_arcsec,
           f"seeing_arcsec={get('seeing_arcsec')} > {t.max_seeing_arcsec}")
    yield ("ASTROMETRY_FAILED", "astrometry_ok" in m or "astrometry_rms_arcsec" in m,
           (not get("astrometry_ok", True))
           or not get("astrometry_rms_arcsec", 0.0) <= t.max_astrometry_rms_arcsec,
           f"astrometry_ok={get('astrometry_ok')}, astrometry_rms_arcsec="
           f"{get('astrometry_rms_arcsec')} (limit {t.max_astrometry_rms_arcsec})")
    yield ("FEW_SOURCES", "n_sources" in m, not get("n_sources", 0) >= t.min_sources,
           f"n_sources={get('n_sources')} < {t.min_sources}")
    yield ("SATURATION_HIGH", "saturated_fraction" in m,
           not get("saturated_fraction", 0.0) <= t.max_saturated_fraction,
           f"saturated_fraction={get('saturated_fraction')} > {t.max_saturated_fraction}")


def quality_status(metrics: dict, thresholds: QualityThresholds | None = None) -> QualityStatus:
    """Judge an image from its QA metrics.

    Parameters
    ----------
    metrics : dict
        Any of: ``zp_fit_failed`` (bool), ``n_calibrators``, ``zp_rms``, ``zp_unc`` (mag),
        ``zp`` and ``zp_nominal`` (AB mag for 1 DN; see :func:`nominal_zero_point`),
        ``seeing_arcsec``, ``astrometry_ok`` (bool), ``astrometry_rms_arcsec``, ``n_sources``,
        ``saturated_fraction``. A check whose metrics are absent is not made; a NaN metric
        fails its check.
    thresholds : QualityThresholds, optional

    Returns
    -------
    QualityStatus
        ``infobits`` (int bit mask of :data:`QA_FLAGS`), ``status`` (1 good, 0 when a fatal
        flag is set) and ``reasons`` (one line per flag set, with the numbers).
    """
    t = thresholds or QualityThresholds()
    infobits, reasons, fatal = 0, [], False
    for name, present, failed, reason in _checks(metrics, t):
        if present and failed:
            flag = _BY_NAME[name]
            infobits |= flag.value
            fatal |= flag.fatal
            reasons.append(f"{name}: {reason}")
    return QualityStatus(infobits, 0 if fatal else 1, reasons)


def flag_names(infobits: int) -> list[str]:
    """Names of the flags set in ``infobits``, in bit order."""
    return [f.name for f in QA_FLAGS if infobits & f.value]

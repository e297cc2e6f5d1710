"""The archive layout: the one module that knows where every product lives.

It follows the public ZTF (IRSA) layout and file names (``shared/research/ztf-facts.md`` §4):

=========  ===================================================================================
raw        ``raw/YYYY/MMDD/ffffff/ztf_<filefracday>_<field6>_<fc>_c<CC>_<T>.fits.fz``
sci        ``sci/YYYY/MMDD/ffffff/ztf_<filefracday>_<field6>_<fc>_c<CC>_<T>_q<Q>_<suffix>``
cal        ``cal/YYYY/MMDD/<caltype>/<fc>/ccdCC/qQ/ztf_<YYYYMMDD>_<fc>_c<CC>_q<Q>_<caltype><sfx>``
ref        ``ref/<fff>/field<field6>/<fc>/ccdCC/qQ/ztf_<field6>_<fc>_c<CC>_q<Q>_<suffix>``
=========  ===================================================================================

``filefracday`` is the UTC date of shutter open followed by ``floor(frac_of_day * 1e6)``
(6 digits); ``fc`` the filter code (``zg``, ``zr``, ``zi``; ``bi`` for biases, ``OO``
accepted); ``T`` the image type code (``o``, ``b``, ``f``, ``d``). zsds adds its own areas
beside these: ``quarantine/``, ``alerts/``, ``lightcurves/`` and ``refcat/``.
No other module builds archive paths.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path


__all__ = ["ArchiveLayout", "RawName", "filefracday_from_jd", "parse_raw_name",
           "IMGTYPE_CODES", "BIAS_FILTER_CODES"]

#: Raw-file image type -> type code.
IMGTYPE_CODES = {"object": "o", "bias": "b", "flat": "f", "dark": "d"}
#: Filter codes accepted for bias files.
BIAS_FILTER_CODES = ("bi", "OO")

_JD_UNIX_EPOCH = 2440587.5
_UNIX_EPOCH = datetime(1970, 1, 1)
_RAW_RE = re.compile(
    r"^ztf_(?P<date>\d{8})(?P<frac>\d{6})_(?P<field>\d{6})_(?P<fc>zg|zr|zi|bi|OO|dk)"
    r"_c(?P<ccd>\d{2})_(?P<type>[obfd])\.fits\.fz$")


@dataclass(frozen=True)
class RawName:
    """The parts of a raw file name."""

    date: str          # YYYYMMDD (UTC, shutter open)
    frac: str          # 6-digit fraction of the UTC day
    field_id: int
    filter_code: str
    ccd_id: int
    type_code: str

    @property
    def filefracday(self) -> str:
        return self.date + self.frac

    @property
    def name(self) -> str:
        return (f"ztf_{self.filefracday}_{self.field_id:06d}_{self.filter_code}"
                f"_c{self.ccd_id:02d}_{self.type_code}.fits.fz")


def parse_raw_name(name: str) -> RawName:
    """Parse a raw file name; raises ``ValueError`` naming the file if it does not follow it."""
    m = _RAW_RE.match(Path(name).name)
    if not m:
        raise ValueError(f"{name}: not a raw file name ztf_<YYYYMMDDffffff>_<FFFFFF>_<FF>"
                         "_c<CC>_<T>.fits.fz")
    return RawName(m["date"], m["frac"], int(m["field"]), m["fc"], int(m["ccd"]), m["type"])


def filefracday_from_jd(jd: float) -> str:
    """``YYYYMMDDffffff`` of a JD (UTC): the date and ``floor(frac_of_day * 1e6)``.

    Calendar arithmetic (UTC days since JD 2440587.5 = 1970-01-01), leap seconds ignored.

    Examples
    --------
    >>> filefracday_from_jd(2458883.697199)
    '20200204197199'
    """
    days = float(jd) - _JD_UNIX_EPOCH
    day = math.floor(days)
    digits = min(int(math.floor((days - day) * 1e6 + 1e-7)), 999999)
    ymd = (_UNIX_EPOCH + timedelta(days=day)).strftime("%Y%m%d")
    return f"{ymd}{digits:06d}"


def night_of_jd(jd: float) -> str:
    """The UTC date ``YYYYMMDD`` of a JD (ZTF nights are labelled by their UTC date).

    Always ``filefracday_from_jd(jd)[:8]``, computed without the day fraction.
    """
    day = math.floor(float(jd) - _JD_UNIX_EPOCH)
    return (_UNIX_EPOCH + timedelta(days=day)).strftime("%Y%m%d")


@dataclass(frozen=True)
class ArchiveLayout:
    """Paths of every product under an archive root.

    Parameters
    ----------
    root : Path
        The archive root (config key ``archive.root``).
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # -- raw -------------------------------------------------------------------------------
    def raw_dir(self, filefracday: str) -> Path:
        """``raw/YYYY/MMDD/ffffff``."""
        return self.root / "raw" / filefracday[:4] / filefracday[4:8] / filefracday[8:14]

    def raw_path(self, name: RawName | str) -> Path:
        """Archive path of a raw file, from its (valid) name."""
        rn = parse_raw_name(name) if isinstance(name, str) else name
        return self.raw_dir(rn.filefracday) / rn.name

    def raw_night_dir(self, night: str) -> Path:
        """``raw/YYYY/MMDD`` of a night ``YYYYMMDD``."""
        return self.root / "raw" / night[:4] / night[4:8]

    # -- science products ----------------------------------------------------------------
    def sci_path(self, filefracday: str, field_id: int, filter_code: str, ccd_id: int,
                 qid: int, suffix: str, type_code: str = "o") -> Path:
        """Path of a per-quadrant science product, e.g. suffix ``sciimg.fits``."""
        name = (f"ztf_{filefracday}_{field_id:06d}_{filter_code}_c{ccd_id:02d}_{type_code}"
                f"_q{qid}_{suffix}")
        return (self.root / "sci" / filefracday[:4] / filefracday[4:8] / filefracday[8:14]
                / name)

    # -- calibration products ---------------------------------------------------------------
    def cal_path(self, night: str, caltype: str, filter_code: str, ccd_id: int, qid: int,
                 suffix: str = ".fits") -> Path:
        """Path of a calibration product.

        ``suffix`` is appended to the caltype: ``.fits``, ``unc.fits``, ``log.txt``,
        ``mask.fits``. Biases use filter code ``OO``, as ZTF does.
        """
        fc = "OO" if caltype == "bias" else filter_code
        name = f"ztf_{night}_{fc}_c{ccd_id:02d}_q{qid}_{caltype}{suffix}"
        return (self.root / "cal" / night[:4] / night[4:8] / caltype / fc / f"ccd{ccd_id:02d}"
                / f"q{qid}" / name)

    # -- reference images -----------------------------------------------------------------
    def ref_dir(self, field_id: int, filter_code: str, ccd_id: int, qid: int) -> Path:
        f6 = f"{field_id:06d}"
        return (self.root / "ref" / f6[:3] / f"field{f6}" / filter_code / f"ccd{ccd_id:02d}"
                / f"q{qid}")

    def ref_path(self, field_id: int, filter_code: str, ccd_id: int, qid: int,
                 suffix: str) -> Path:
        """Path of a reference product, e.g. suffix ``refimg.fits``."""
        name = f"ztf_{field_id:06d}_{filter_code}_c{ccd_id:02d}_q{qid}_{suffix}"
        return self.ref_dir(field_id, filter_code, ccd_id, qid) / name

    # -- zsds areas -----------------------------------------------------------------------------
    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    def alerts_dir(self, night: str) -> Path:
        return self.root / "alerts" / night

    @property
    def lightcurves_dir(self) -> Path:
        return self.root / "lightcurves"

    @property
    def refcat_dir(self) -> Path:
        return self.root / "refcat"

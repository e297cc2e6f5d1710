"""The numbers of the night QA report, computed from tables read out of the database.

:func:`read_night` is the only function here that touches the database; every other function
takes DataFrames (the tables of :class:`NightTables`) and returns plain numbers, DataFrames or
dicts, so the report and its tests compute the same thing the same way.

Definitions used throughout
---------------------------
planned
    Readout quadrants of the night's object exposures (``quadrant_images`` joined to
    ``exposures``).
processed
    Quadrants with a ``science_images`` row (the calibration stage finished, good or bad).
good / bad
    Processed quadrants with ``science_images.status`` 1 / 0 (bad reasons from ``infobits``).
failed
    Quadrants with a ``processing`` row in status ``failed`` (any stage); the reason is the
    exception line of the traceback in ``processing.message``.
pending
    Planned quadrants neither processed nor failed.

Per-exposure and per-quadrant medians are taken over *every processed* quadrant with a finite
value (good and bad alike), so an exposure whose images were all judged bad, e.g. for seeing,
still shows on the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..core.qaflags import QualityThresholds, flag_names
from ..db import schema as s

__all__ = ["NightTables", "read_night", "Threshold", "QAThresholds", "QUANTITIES",
           "science_quantities", "exposure_medians", "quadrant_medians", "quadrant_counts",
           "failures", "bad_reasons", "candidates_per_quadrant", "processing_times",
           "first_reason"]


# -- reading -----------------------------------------------------------------------------
@dataclass
class NightTables:
    """The database rows of one night, one DataFrame per table.

    ``quadrants`` are the object-exposure quadrants (with ``obsjd``, ``filter_code``,
    ``field_id`` of their exposure); ``processing``, ``candidates`` and ``alerts`` are
    restricted to the night's exposures.
    """

    night: str
    exposures: pd.DataFrame
    raw_files: pd.DataFrame
    quadrants: pd.DataFrame
    processing: pd.DataFrame
    science: pd.DataFrame
    candidates: pd.DataFrame
    alerts: pd.DataFrame


def _read(conn, stmt) -> pd.DataFrame:
    result = conn.execute(stmt)
    return pd.DataFrame(result.mappings().all(), columns=list(result.keys()))


def read_night(engine: sa.Engine, night: str) -> NightTables:
    """Read every row the report needs for ``night`` (``YYYYMMDD``)."""
    ex, qi, p, c, a = (s.exposures.c, s.quadrant_images.c, s.processing.c, s.candidates.c,
                       s.alerts.c)
    on_night = ex.night == night
    with engine.connect() as conn:
        exposures = _read(conn, sa.select(s.exposures).where(on_night).order_by(ex.obsjd))
        raw = _read(conn, sa.select(s.raw_files).where(s.raw_files.c.night == night)
                    .order_by(s.raw_files.c.filename))
        quads = _read(conn, sa.select(qi.expid, qi.ccd_id, qi.qid, qi.rcid, qi.nx, qi.ny,
                                      qi.n_overscan, qi.status, qi.status_message, ex.obsjd,
                                      ex.filter_code, ex.field_id)
                      .join(s.exposures, ex.expid == qi.expid)
                      .where(on_night & (ex.imgtype == "object"))
                      .order_by(ex.obsjd, qi.ccd_id, qi.qid))
        proc = _read(conn, sa.select(s.processing).join(s.exposures, ex.expid == p.expid)
                     .where(on_night).order_by(p.expid, p.ccd_id, p.qid, p.stage))
        sci = _read(conn, sa.select(s.science_images).where(s.science_images.c.night == night)
                    .order_by(s.science_images.c.obsjd, s.science_images.c.ccd_id,
                              s.science_images.c.qid))
        cands = _read(conn, sa.select(c.candid, c.expid, c.ccd_id, c.qid, c.jd, c.rb)
                      .join(s.exposures, ex.expid == c.expid).where(on_night))
        alerts = _read(conn, sa.select(a.candid, a.status, a.path, c.expid, c.ccd_id, c.qid)
                       .join(s.candidates, c.candid == a.candid)
                       .join(s.exposures, ex.expid == c.expid).where(on_night))
    return NightTables(night, exposures, raw, quads, proc, sci, cands, alerts)


# -- thresholds ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Threshold:
    """Green / amber / red limits of one quantity.

    ``green`` and ``red`` are the limits; with ``higher_is_better`` False (seeing), a value
    ``<= green`` is green, ``> red`` red and amber in between; reversed otherwise (depth).
    """

    name: str
    unit: str
    green: float
    red: float
    higher_is_better: bool = False
    doc: str = ""

    def colour(self, value) -> str:
        """``green``, ``amber``, ``red``, or ``grey`` for a missing / NaN value."""
        if value is None or not np.isfinite(value):
            return "grey"
        if self.higher_is_better:
            return "green" if value >= self.green else "amber" if value >= self.red else "red"
        return "green" if value <= self.green else "amber" if value <= self.red else "red"

    def as_dict(self) -> dict:
        return {"name": self.name, "unit": self.unit, "green": self.green, "red": self.red,
                "higher_is_better": self.higher_is_better, "doc": self.doc}


#: Per-filter 5-sigma depth limits (green, red), AB mag in 30 s; ZTF's median depths are
#: about g 20.8, r 20.6, i 20.2.
_MAGLIM_LIMITS = {"zg": (20.3, 19.8), "zr": (20.1, 19.6), "zi": (19.7, 19.2)}


@dataclass(frozen=True)
class QAThresholds:
    """The red/amber/green limits of the report.

    The red limits of seeing and zero-point deficit are the pipeline's own (an image beyond
    them is judged bad, :mod:`zsds.core.qaflags`); the green limits are tighter.
    """

    seeing: Threshold
    maglim: dict[str, Threshold]
    zp_deficit: Threshold
    astrom_rms: Threshold
    failure_fraction: Threshold
    bad_fraction: Threshold

    @classmethod
    def from_config(cls, config) -> "QAThresholds":
        """Limits from the configuration (``calibrate.max_seeing_arcsec``) and pipeline defaults."""
        q = QualityThresholds()
        red_seeing = float(config.calibrate.max_seeing_arcsec)
        return cls(
            seeing=Threshold("seeing", "arcsec", min(2.5, 0.75 * red_seeing), red_seeing,
                             doc="PSF FWHM; red beyond calibrate.max_seeing_arcsec"),
            maglim={fc: Threshold(f"maglim_{fc}", "AB mag", g, r, higher_is_better=True,
                                  doc=f"5-sigma point-source depth in {fc}")
                    for fc, (g, r) in _MAGLIM_LIMITS.items()},
            zp_deficit=Threshold("zp_deficit", "mag", 0.5 * q.max_zp_deficit, q.max_zp_deficit,
                                 doc="nominal zero point (calibrate.nominal_zp - extinction * "
                                     "airmass) minus MAGZP: clouds"),
            astrom_rms=Threshold("astrom_rms", "arcsec", 0.5 * q.max_astrometry_rms_arcsec,
                                 q.max_astrometry_rms_arcsec,
                                 doc="hypot(astrom_rms_ra, astrom_rms_dec)"),
            failure_fraction=Threshold("failure_fraction", "", 0.02, 0.10,
                                       doc="failed / planned quadrants"),
            bad_fraction=Threshold("bad_fraction", "", 0.10, 0.25,
                                   doc="processed quadrants judged bad (STATUS=0) / processed"),
        )

    def for_quantity(self, quantity: str, filter_code: str | None = None) -> Threshold | None:
        """The threshold of a quantity of :data:`QUANTITIES` (MAGLIM per filter), or None."""
        if quantity == "maglim":
            return self.maglim.get(filter_code or "", None)
        return {"seeing": self.seeing, "zp_deficit": self.zp_deficit,
                "astrom_rms": self.astrom_rms}.get(quantity)

    def as_dict(self) -> dict:
        return {"seeing": self.seeing.as_dict(),
                "maglim": {fc: t.as_dict() for fc, t in self.maglim.items()},
                "zp_deficit": self.zp_deficit.as_dict(), "astrom_rms": self.astrom_rms.as_dict(),
                "failure_fraction": self.failure_fraction.as_dict(),
                "bad_fraction": self.bad_fraction.as_dict()}


# -- per-image quantities --------------------------------------------------------------------
#: Quantity -> (label, unit). ``zp_deficit`` and ``astrom_rms`` are derived (science_quantities).
QUANTITIES = {
    "seeing": ("Seeing FWHM", "arcsec"),
    "maglim": ("Limiting magnitude (5 sigma)", "AB mag"),
    "magzp": ("Zero point MAGZP", "AB mag"),
    "zp_deficit": ("Zero-point deficit from nominal", "mag"),
    "astrom_rms": ("Astrometric RMS", "arcsec"),
    "sky": ("Sky background", "DN"),
}


def science_quantities(science: pd.DataFrame, nominal_zp: dict[str, float],
                       extinction: dict[str, float]) -> pd.DataFrame:
    """One row per processed quadrant with the report's quantities.

    Columns: ``expid, ccd_id, qid, obsjd, filter_code, status`` and every key of
    :data:`QUANTITIES`. ``zp_deficit = nominal_zp[f] - extinction[f] * airmass - magzp``
    (positive when light is lost); ``astrom_rms = hypot(astrom_rms_ra, astrom_rms_dec)``.
    """
    df = science
    zp0 = df["filter_code"].map(nominal_zp).astype(float)
    k = df["filter_code"].map(extinction).astype(float)
    out = pd.DataFrame({
        "expid": df["expid"].astype("int64"), "ccd_id": df["ccd_id"].astype(int),
        "qid": df["qid"].astype(int), "obsjd": df["obsjd"].astype(float),
        "filter_code": df["filter_code"], "status": df["status"].astype(int),
        "seeing": pd.to_numeric(df["seeing_arcsec"], errors="coerce"),
        "maglim": pd.to_numeric(df["maglim"], errors="coerce"),
        "magzp": pd.to_numeric(df["magzp"], errors="coerce"),
        "sky": pd.to_numeric(df["sky"], errors="coerce"),
    })
    out["zp_deficit"] = zp0 - k * pd.to_numeric(df["airmass"], errors="coerce") - out["magzp"]
    out["astrom_rms"] = np.hypot(pd.to_numeric(df["astrom_rms_ra"], errors="coerce"),
                                 pd.to_numeric(df["astrom_rms_dec"], errors="coerce"))
    return out


def _medians(q: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Median of every quantity over the groups, NaN-skipping, plus image counts."""
    g = q.groupby(keys, sort=True)
    med = g[list(QUANTITIES)].median()
    med["n_images"] = g.size()
    med["n_good"] = g["status"].sum()
    return med.reset_index()


def exposure_medians(quantities: pd.DataFrame, thresholds: QAThresholds) -> pd.DataFrame:
    """Per exposure: ``obsjd, filter_code``, median of each quantity, image counts, colours.

    Columns ``colour_<quantity>`` hold green/amber/red/grey for the thresholded quantities
    and ``colour`` the worst of them.
    """
    if quantities.empty:
        cols = ["expid", "obsjd", "filter_code", *QUANTITIES, "n_images", "n_good", "colour"]
        return pd.DataFrame(columns=cols)
    med = _medians(quantities, ["expid", "obsjd", "filter_code"])
    return _add_colours(med, thresholds)


def quadrant_medians(quantities: pd.DataFrame, thresholds: QAThresholds) -> pd.DataFrame:
    """Per (ccd_id, qid): the night's median of each quantity (all filters) and colours.

    MAGLIM is coloured with the threshold of the quadrant's most frequent filter.
    """
    if quantities.empty:
        return pd.DataFrame(columns=["ccd_id", "qid", *QUANTITIES, "n_images", "n_good"])
    med = _medians(quantities, ["ccd_id", "qid"])
    main_filter = (quantities.groupby(["ccd_id", "qid"])["filter_code"]
                   .agg(lambda v: v.mode().iat[0]).reset_index(drop=True))
    med["filter_code"] = main_filter.to_numpy()
    return _add_colours(med, thresholds)


_ORDER = {"grey": 0, "green": 1, "amber": 2, "red": 3}


def worst(colours) -> str:
    """The worst of some colours (red > amber > green > grey)."""
    colours = list(colours)
    return max(colours, key=_ORDER.__getitem__) if colours else "grey"


def _add_colours(med: pd.DataFrame, thresholds: QAThresholds) -> pd.DataFrame:
    cols = []
    for qty in ("seeing", "maglim", "zp_deficit", "astrom_rms"):
        name = f"colour_{qty}"
        med[name] = [
            (t.colour(v) if (t := thresholds.for_quantity(qty, fc)) else "grey")
            for v, fc in zip(med[qty], med["filter_code"])]
        cols.append(name)
    med["colour"] = [worst(r) for r in med[cols].itertuples(index=False)]
    return med


# -- counts, failures, reasons ----------------------------------------------------------------
def first_reason(message: str | None) -> str:
    """One line for a failure message: the exception line of a traceback, else its first line."""
    if not message:
        return "(no message)"
    lines = [ln.strip() for ln in str(message).strip().splitlines() if ln.strip()]
    if not lines:
        return "(no message)"
    if lines[0].startswith("Traceback"):
        return lines[-1]
    return lines[0]


def failures(processing: pd.DataFrame, quadrants: pd.DataFrame) -> pd.DataFrame:
    """Failed processing rows: ``stage, expid, ccd_id, qid, obsjd, filter_code, attempts,
    reason`` (one line) and ``message`` (full), ordered by time."""
    cols = ["stage", "expid", "ccd_id", "qid", "obsjd", "filter_code", "attempts", "reason",
            "message"]
    if processing.empty:
        return pd.DataFrame(columns=cols)
    f = processing[processing["status"] == "failed"].copy()
    f["reason"] = [first_reason(m) for m in f["message"]]
    meta = quadrants[["expid", "ccd_id", "qid", "obsjd", "filter_code"]]
    f = f.merge(meta, on=["expid", "ccd_id", "qid"], how="left")
    return f[cols].sort_values(["obsjd", "ccd_id", "qid", "stage"]).reset_index(drop=True)


def _keys(df: pd.DataFrame) -> set[tuple]:
    if df.empty:
        return set()
    return set(map(tuple, df[["expid", "ccd_id", "qid"]].astype("int64").to_numpy().tolist()))


def _rejected(processing: pd.DataFrame, science: pd.DataFrame) -> pd.DataFrame:
    """Processing rows in status ``bad`` with no science image (rejected before the end of
    the stage, e.g. too few stars; older databases record these so)."""
    if processing.empty:
        return processing
    rows = processing[processing["status"] == "bad"]
    have = _keys(science)
    keep = [k not in have for k in map(tuple, rows[["expid", "ccd_id", "qid"]]
                                       .astype("int64").to_numpy().tolist())]
    return rows.loc[np.asarray(keep, dtype=bool)]


def bad_reasons(science: pd.DataFrame, processing: pd.DataFrame | None = None) -> dict[str, int]:
    """Number of bad images per reason, most frequent first.

    Science images with STATUS=0 count once per QA flag name set in ``infobits``; quadrants
    rejected without a science image (processing status ``bad``) count under the one-line
    reason of their message.
    """
    counts: dict[str, int] = {}
    for bits in science.loc[science["status"] == 0, "infobits"]:
        for name in flag_names(int(bits)) or ["(no flag)"]:
            counts[name] = counts.get(name, 0) + 1
    if processing is not None:
        for msg in _rejected(processing, science)["message"]:
            reason = first_reason(msg)
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def quadrant_counts(tables: NightTables, thresholds: QAThresholds) -> dict:
    """Planned / processed / good / bad / failed / pending quadrants, fractions and colours.

    ``processed`` = quadrants with a science image or a processing row in status ``done`` or
    ``bad``, minus the failed ones; ``good`` = science STATUS=1; ``bad`` = processed - good.
    """
    sci, proc = tables.science, tables.processing
    planned = _keys(tables.quadrants)
    failed = _keys(proc[proc["status"] == "failed"]) & planned if not proc.empty else set()
    finished = _keys(sci) | (_keys(proc[proc["status"].isin(["done", "bad"])])
                             if not proc.empty else set())
    processed = (finished & planned) - failed
    good = _keys(sci[sci["status"] == 1]) & processed
    n_planned, n_processed, n_failed = len(planned), len(processed), len(failed)
    n_good = len(good)
    n_bad = n_processed - n_good
    n_pending = len(planned - processed - failed)
    fail_frac = n_failed / n_planned if n_planned else float("nan")
    bad_frac = n_bad / n_processed if n_processed else float("nan")
    return {
        "exposures": int((tables.exposures["imgtype"] == "object").sum()),
        "exposures_by_type": {str(k): int(v) for k, v in
                              tables.exposures["imgtype"].value_counts().sort_index().items()},
        "planned": n_planned, "processed": n_processed, "good": n_good, "bad": n_bad,
        "failed": n_failed, "pending": n_pending,
        "failure_fraction": fail_frac,
        "failure_colour": thresholds.failure_fraction.colour(fail_frac),
        "bad_fraction": bad_frac,
        "bad_colour": thresholds.bad_fraction.colour(bad_frac),
    }


# -- candidates -----------------------------------------------------------------------------
def candidates_per_quadrant(quadrants: pd.DataFrame, science: pd.DataFrame,
                            candidates: pd.DataFrame, alerts: pd.DataFrame) -> dict:
    """Candidates and alerts per readout quadrant.

    Returns ``by_ccd_qid`` (DataFrame ``ccd_id, qid, n_images, candidates, alerts``, one row
    per observed quadrant) and ``per_image`` (array of candidate counts per processed quadrant
    image, zeros included, for the histogram).
    """
    key = ["expid", "ccd_id", "qid"]
    images = science[key].drop_duplicates()
    n_cand = candidates.groupby(key).size().rename("candidates")
    per_image = images.merge(n_cand.reset_index(), on=key, how="left")["candidates"]
    per_image = per_image.fillna(0).astype(int).to_numpy()
    obs = quadrants.groupby(["ccd_id", "qid"]).size().rename("n_quadrants")
    nimg = images.groupby(["ccd_id", "qid"]).size().rename("n_images")
    c = candidates.groupby(["ccd_id", "qid"]).size().rename("candidates")
    a = alerts.groupby(["ccd_id", "qid"]).size().rename("alerts")
    table = pd.concat([obs, nimg, c, a], axis=1).fillna(0).astype(int).reset_index()
    if table.empty:
        table = pd.DataFrame(columns=["ccd_id", "qid", "n_quadrants", "n_images", "candidates",
                                      "alerts"])
    return {"by_ccd_qid": table, "per_image": per_image,
            "total_candidates": int(len(candidates)), "total_alerts": int(len(alerts))}


# -- processing time ----------------------------------------------------------------------
def _seconds(start, end) -> pd.Series:
    start = pd.to_datetime(start, utc=True, errors="coerce", format="mixed")
    end = pd.to_datetime(end, utc=True, errors="coerce", format="mixed")
    return (end - start).dt.total_seconds()


def _stats(sec: pd.Series) -> dict:
    sec = sec.dropna()
    if sec.empty:
        return {"n": 0, "total_s": 0.0, "median_s": math.nan, "p95_s": math.nan, "max_s": math.nan}
    return {"n": int(sec.size), "total_s": float(sec.sum()), "median_s": float(sec.median()),
            "p95_s": float(np.percentile(sec, 95)), "max_s": float(sec.max())}


def processing_times(processing: pd.DataFrame, science: pd.DataFrame) -> dict:
    """Wall-clock seconds per stage.

    ``stages``: per ``processing.stage``, statistics of ``finished_at - started_at`` over
    finished rows (the last attempt only: the table keeps one row per quadrant and stage).
    ``science_seconds``: statistics of ``science_images.seconds`` (time inside the stage as
    the stage measured it).
    """
    stages = {}
    if not processing.empty:
        done = processing[processing["finished_at"].notna()].copy()
        done["seconds"] = _seconds(done["started_at"], done["finished_at"])
        for stage, grp in done.groupby("stage", sort=True):
            st = _stats(grp["seconds"])
            st["attempts"] = int(grp["attempts"].sum())
            st["by_status"] = {str(k): int(v) for k, v in grp["status"].value_counts().items()}
            stages[str(stage)] = st
    sci_sec = pd.to_numeric(science.get("seconds", pd.Series(dtype=float)), errors="coerce")
    return {"stages": stages, "science_seconds": _stats(sci_sec)}

"""The night QA report: ``<archive>/reports/<night>/index.html`` and ``report.json``.

:func:`make_night_report` reads the night from the database (:func:`zsds.qa.metrics.read_night`),
computes the numbers (:func:`night_numbers`, which is what ``report.json`` holds), draws the
figures (:mod:`zsds.qa.plots`, saved as PNG beside the page and embedded in it as base64, so
the HTML is self-contained) and renders the page (:func:`render_html`).
"""

from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ZsdsConfig
from ..db.ops import make_engine
from ..errors import ZsdsError
from ..io.paths import ArchiveLayout
from . import plots
from .ledger import (ProjectionAssumptions, product_volume, project_yearly, raw_volume,
                     scan_products)
from .metrics import (QUANTITIES, NightTables, QAThresholds, bad_reasons,
                      candidates_per_quadrant, exposure_medians, failures, processing_times,
                      quadrant_counts, quadrant_medians, read_night, science_quantities, worst)

__all__ = ["make_night_report", "night_numbers", "render_html", "report_dir", "SECTIONS"]

#: The sections of the page: (HTML id, title).
SECTIONS = (
    ("summary", "Summary"),
    ("time-series", "Quality against time"),
    ("focal-plane", "Focal-plane maps"),
    ("exposures", "Exposures"),
    ("candidates", "Candidates and alerts per quadrant"),
    ("failures", "Failures"),
    ("bad-images", "Bad images"),
    ("ledger", "Data-volume ledger"),
    ("processing-time", "Processing time"),
    ("projection", "Projected yearly volume"),
    ("thresholds", "Thresholds"),
)
_MAP_QUANTITIES = ("seeing", "maglim", "zp_deficit", "astrom_rms")


def report_dir(config: ZsdsConfig, night: str) -> Path:
    """``<archive.root>/reports/<night>``."""
    return Path(config.archive.root) / "reports" / night


# -- numbers --------------------------------------------------------------------------------
def _records(df: pd.DataFrame, columns: list[str] | None = None) -> list[dict]:
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _plain(v):
    """JSON-ready scalar: NaN/NaT -> None, numpy -> Python."""
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (pd.Timestamp, datetime)):
        return v.isoformat()
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def night_numbers(tables: NightTables, config: ZsdsConfig, *,
                  thresholds: QAThresholds | None = None,
                  assumptions: ProjectionAssumptions = ProjectionAssumptions()) -> dict:
    """Every number of the report (the content of ``report.json``), plus the DataFrames the
    figures need under the key ``"_frames"`` (dropped from the JSON)."""
    t = thresholds or QAThresholds.from_config(config)
    layout = ArchiveLayout(config.archive.root)
    per_image = science_quantities(tables.science, dict(config.calibrate.nominal_zp),
                                   dict(config.calibrate.extinction))
    per_exp = exposure_medians(per_image, t)
    per_quad = quadrant_medians(per_image, t)
    counts = quadrant_counts(tables, t)
    fails = failures(tables.processing, tables.quadrants)
    cands = candidates_per_quadrant(tables.quadrants, tables.science, tables.candidates,
                                    tables.alerts)
    raw = raw_volume(tables.raw_files, layout.root)
    products_df = scan_products(layout, tables.night, observed=tables.quadrants)
    products = product_volume(products_df)
    n_exp = counts["exposures"]
    projection = project_yearly(raw, products, tables.quadrants, n_exp, assumptions)
    sci_seconds = processing_times(tables.processing, tables.science)
    scale = projection["assumptions"]["camera_scale"] * projection["assumptions"]["pixel_scale"]
    projection["calibrate_core_hours_per_night"] = (
        sci_seconds["science_seconds"]["total_s"] / max(n_exp, 1)
        * assumptions.exposures_per_night * scale / 3600.0)
    registered = set(tables.science["path"]) if not tables.science.empty else set()
    orphans = (int((products_df["suffix"].eq("sciimg.fits")
                    & ~products_df["path"].isin(registered)).sum())
               if not products_df.empty else 0)
    night_median = {q: _plain(per_image[q].median()) if not per_image.empty else None
                    for q in QUANTITIES}
    night_colour = {"seeing": t.seeing.colour(night_median["seeing"]),
                    "zp_deficit": t.zp_deficit.colour(night_median["zp_deficit"]),
                    "astrom_rms": t.astrom_rms.colour(night_median["astrom_rms"])}
    red_exposures = (per_exp.loc[per_exp["colour"] == "red", "expid"].astype(int).tolist()
                     if not per_exp.empty else [])
    overall = worst([counts["failure_colour"], counts["bad_colour"], *night_colour.values(),
                     *(per_exp["colour"] if not per_exp.empty else [])])
    exp_cols = ["expid", "obsjd", "filter_code", "n_images", "n_good", *QUANTITIES,
                "colour_seeing", "colour_maglim", "colour_zp_deficit", "colour_astrom_rms",
                "colour"]
    quad_cols = ["ccd_id", "qid", "filter_code", "n_images", "n_good", *QUANTITIES,
                 "colour_seeing", "colour_maglim", "colour_zp_deficit", "colour_astrom_rms",
                 "colour"]
    numbers = {
        "night": tables.night,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "archive_root": str(layout.root),
        "status": overall,
        "counts": counts,
        "night_median": night_median,
        "night_colour": night_colour,
        "red_exposures": red_exposures,
        "exposures": _records(per_exp, exp_cols),
        "quadrants": _records(per_quad, quad_cols),
        "failures": _records(fails.drop(columns=["message"])),
        "failure_reasons": {str(k): int(v) for k, v in fails["reason"].value_counts().items()},
        "bad_reasons": bad_reasons(tables.science, tables.processing),
        "candidates": {"total": cands["total_candidates"], "alerts": cands["total_alerts"],
                       "per_quadrant": _records(cands["by_ccd_qid"])},
        "ledger": {"raw": raw, "products": products,
                   "products_total_bytes": int(sum(p["bytes"] for p in products)),
                   "products_total_files": int(sum(p["files"] for p in products)),
                   "sciimg_without_db_row": orphans},
        "processing_time": sci_seconds,
        "projection": projection,
        "thresholds": t.as_dict(),
    }
    numbers = _plain(numbers)
    numbers["_frames"] = {"per_image": per_image, "per_exposure": per_exp,
                          "per_quadrant": per_quad, "per_image_candidates": cands["per_image"],
                          "thresholds": t, "failures": fails}
    return numbers


# -- figures --------------------------------------------------------------------------------
def _figures(numbers: dict) -> dict[str, bytes]:
    f = numbers["_frames"]
    t = f["thresholds"]
    figs = {"time_series.png": plots.time_series_png(f["per_image"], f["per_exposure"],
                                                    numbers["night"], t)}
    for q in _MAP_QUANTITIES:
        cmap = "viridis_r" if q in ("seeing", "zp_deficit", "astrom_rms") else "viridis"
        figs[f"focal_plane_{q}.png"] = plots.focal_plane_png(f["per_quadrant"], q, t, cmap=cmap)
    figs["candidates_hist.png"] = plots.candidates_png(f["per_image_candidates"])
    return figs


# -- HTML -----------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
     color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#cfd8dc;font-size:13px}
nav{padding:8px 28px;background:#eceff1;font-size:13px;position:sticky;top:0;z-index:2}
nav a{margin-right:14px;color:#37474f;text-decoration:none} nav a:hover{text-decoration:underline}
main{padding:0 28px 40px;max-width:1180px}
section{margin-top:26px} h2{font-size:18px;border-bottom:2px solid #cfd8dc;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;font-size:12.5px;background:#fff;margin:6px 0}
th,td{border:1px solid #dde3e6;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#eceff1;font-weight:600} td.l,th.l{text-align:left;white-space:normal}
td.green{background:#d7f0d9} td.amber{background:#ffe3b0} td.red{background:#f6c4c4;font-weight:600}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border:1px solid #dde3e6;border-left:6px solid #9e9e9e;padding:8px 12px;
      min-width:110px}
.tile .v{font-size:20px;font-weight:600} .tile .k{font-size:12px;color:#607d8b}
.tile.green{border-left-color:#2e7d32} .tile.amber{border-left-color:#e69500}
.tile.red{border-left-color:#c62828}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.badge.green{background:#2e7d32} .badge.amber{background:#e69500} .badge.red{background:#c62828}
.badge.grey{background:#9e9e9e}
.grid{display:flex;flex-wrap:wrap;gap:8px} .grid img{width:540px;max-width:100%}
img{max-width:100%;background:#fff;border:1px solid #dde3e6}
.note{font-size:12.5px;color:#546e7a;max-width:900px}
.scroll{max-height:420px;overflow:auto;display:inline-block}
"""


def _e(v) -> str:
    return html.escape(str(v))


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return _e(v)


def _bytes(n) -> str:
    if n is None:
        return "&ndash;"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000.0
    return f"{n:.2f} PB"


def _table(headers: list[str], rows: list[list], left: int = 0,
           classes: list[list[str]] | None = None, text: tuple[int, ...] = ()) -> str:
    """An HTML table of already-formatted cells; the first ``left`` columns and the columns
    in ``text`` are left-aligned (text), the others right-aligned (numbers)."""
    text = tuple(i % len(headers) for i in text)
    head = "".join(f'<th class="l">{h}</th>' if i < left or i in text else f"<th>{h}</th>"
                   for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            cls = []
            if i < left or i in text:
                cls.append("l")
            if classes and classes[r][i]:
                cls.append(classes[r][i])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(name: str, data: bytes, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}" title="{_e(name)}">'


def _tile(key: str, value: str, colour: str = "") -> str:
    return (f'<div class="tile {colour}"><div class="v">{value}</div>'
            f'<div class="k">{key}</div></div>')


def _pct(fraction) -> str:
    return "&ndash;" if fraction is None else f"{100 * fraction:.1f}"


def _summary(n: dict) -> str:
    c = n["counts"]
    m, mc = n["night_median"], n["night_colour"]
    tiles = [
        _tile("object exposures", _fmt(c["exposures"])),
        _tile("quadrants planned", _fmt(c["planned"])),
        _tile("processed", _fmt(c["processed"])),
        _tile("good", _fmt(c["good"]), "green" if c["good"] else ""),
        _tile(f"bad ({_pct(c['bad_fraction'])}% of processed)",
              _fmt(c["bad"]), c["bad_colour"]),
        _tile(f"failed ({_pct(c['failure_fraction'])}% of planned)",
              _fmt(c["failed"]), c["failure_colour"]),
        _tile("pending", _fmt(c["pending"]), "amber" if c["pending"] else ""),
        _tile("median seeing [arcsec]", _fmt(m["seeing"]), mc["seeing"]),
        _tile("median MAGLIM [mag]", _fmt(m["maglim"])),
        _tile("median ZP deficit [mag]", _fmt(m["zp_deficit"], 3), mc["zp_deficit"]),
        _tile("median astrom. RMS [arcsec]", _fmt(m["astrom_rms"], 3), mc["astrom_rms"]),
        _tile("candidates / alerts", f"{_fmt(n['candidates']['total'])} / "
                                     f"{_fmt(n['candidates']['alerts'])}"),
        _tile("raw in", _bytes(n["ledger"]["raw"]["total_bytes"])),
        _tile("products out", _bytes(n["ledger"]["products_total_bytes"])),
        _tile("projected per year", _bytes(n["projection"]["bytes_per_year"])),
    ]
    red = n["red_exposures"]
    red_txt = (f"<p><b>{len(red)} exposure(s) flagged red</b>: {', '.join(map(str, red))}</p>"
               if red else "<p>No exposure flagged red.</p>")
    return f'<div class="tiles">{"".join(tiles)}</div>{red_txt}'


def _exposure_table(n: dict) -> str:
    headers = ["expid", "UT", "filter", "images", "good", "seeing", "MAGLIM", "MAGZP",
               "ZP deficit", "astrom. RMS", "sky", "verdict"]
    rows, classes = [], []
    from astropy.time import Time
    for e in n["exposures"]:
        ut = Time(e["obsjd"], format="jd", scale="utc").to_value("iso", subfmt="date_hms")[11:19]
        rows.append([str(e["expid"]), ut, _e(e["filter_code"]), _fmt(e["n_images"]),
                     _fmt(e["n_good"]), _fmt(e["seeing"]), _fmt(e["maglim"]), _fmt(e["magzp"], 3),
                     _fmt(e["zp_deficit"], 3), _fmt(e["astrom_rms"], 3), _fmt(e["sky"], 1),
                     f'<span class="badge {e["colour"]}">{e["colour"]}</span>'])
        classes.append(["", "", "", "", "", e["colour_seeing"], e["colour_maglim"], "",
                        e["colour_zp_deficit"], e["colour_astrom_rms"], "", ""])
    if not rows:
        return "<p>No processed exposure.</p>"
    return ('<p class="note">Medians over every processed quadrant of the exposure (good and bad '
            'images, NaN skipped); cells coloured against the thresholds below.</p>'
            f'<div class="scroll">{_table(headers, rows, classes=classes)}</div>')


def _candidates(n: dict, figs: dict) -> str:
    per_q = n["candidates"]["per_quadrant"]
    rows = [[_fmt(r["ccd_id"]), _fmt(r["qid"]), _fmt(r["n_quadrants"]), _fmt(r["n_images"]),
             _fmt(r["candidates"]), _fmt(r["alerts"])] for r in per_q]
    table = _table(["CCD", "quadrant", "exposed", "processed", "candidates", "alerts"], rows)
    return (_img("candidates_hist.png", figs["candidates_hist.png"], "candidates per quadrant")
            + f'<div class="scroll">{table}</div>')


def _failures(n: dict) -> str:
    reasons = n["failure_reasons"]
    if not n["failures"]:
        return "<p>No failure.</p>"
    summary = _table(["reason (exception line of the traceback)", "quadrants"],
                     [[_e(k), _fmt(v)] for k, v in reasons.items()], left=1)
    rows = [[_e(f["stage"]), str(f["expid"]), _fmt(f["ccd_id"]), _fmt(f["qid"]),
             _e(f.get("filter_code") or ""), _fmt(f["attempts"]), _e(f["reason"])]
            for f in n["failures"]]
    detail = _table(["stage", "expid", "CCD", "quadrant", "filter", "attempts", "reason"], rows,
                    text=(0, 4, 6))
    return (f"<h3>Reasons</h3>{summary}<h3>Failed quadrants</h3>"
            f'<div class="scroll">{detail}</div>'
            '<p class="note">Full tracebacks: <code>processing.message</code>.</p>')


def _bad(n: dict) -> str:
    if not n["bad_reasons"]:
        return "<p>No image judged bad.</p>"
    rows = [[_e(k), _fmt(v)] for k, v in n["bad_reasons"].items()]
    return ('<p class="note">Images processed but judged unusable (STATUS=0), by QA flag '
            '(an image can carry several).</p>'
            + _table(["QA flag", "images"], rows, left=1))


def _ledger(n: dict) -> str:
    raw = n["ledger"]["raw"]
    rows = [[_e(t["imgtype"]), _fmt(t["files"]), _bytes(t["bytes"]),
             _bytes(t["uncompressed_bytes"]), _fmt(t["compression_ratio"])]
            for t in raw["by_imgtype"]]
    rows.append(["<b>total</b>", _fmt(raw["files"]), _bytes(raw["total_bytes"]),
                 _bytes(raw["uncompressed_bytes"]), _fmt(raw["compression_ratio"])])
    raw_table = _table(["raw image type", "files", "bytes", "uncompressed", "compression"], rows,
                       left=1)
    check = ("matches" if raw["disk_bytes"] == raw["total_bytes"] and not raw["missing"]
             else f"<b>differs</b>: {_bytes(raw['disk_bytes'])} on disk, {raw['missing']} missing")
    prows = [[_e(p["area"]), _e(p["suffix"]), _fmt(p["files"]), _bytes(p["bytes"]),
              _bytes(p["uncompressed_bytes"]), _fmt(p["compression_ratio"])]
             for p in n["ledger"]["products"]]
    prows.append(["<b>total</b>", "", _fmt(n["ledger"]["products_total_files"]),
                  _bytes(n["ledger"]["products_total_bytes"]), "", ""])
    prod_table = _table(["area", "product", "files", "bytes", "uncompressed", "compression"], prows,
                        left=2)
    total_in = raw["total_bytes"] or 0
    out = n["ledger"]["products_total_bytes"] or 0
    ratio = f"{out / total_in:.2f}" if total_in else "&ndash;"
    return (f"<h3>In: raw files</h3>{raw_table}"
            f'<p class="note">Bytes from <code>raw_files.size_bytes</code>; the files on disk: '
            f"{check}. Uncompressed = the equivalent plain FITS file (headers + NAXIS1&times;NAXIS2"
            f"&times;|BITPIX|/8 per HDU), from the headers.</p>"
            f"<h3>Out: products by type</h3>{prod_table}"
            f'<p class="note">Out / in = {ratio}. '
            f"{n['ledger']['sciimg_without_db_row']} sciimg.fits file(s) have no "
            "<code>science_images</code> row (left by failed quadrants). Scanned: sci/ and "
            "cal/ of the night, alerts/"
            f"{_e(n['night'])}, and the ref/ products of the quadrants observed (references are "
            "shared by every night of a field).</p>")


def _processing(n: dict) -> str:
    pt = n["processing_time"]
    rows = [[_e(stage), _fmt(st["n"]), _fmt(st["attempts"]), _fmt(st["total_s"], 1),
             _fmt(st["median_s"]), _fmt(st["p95_s"]), _fmt(st["max_s"]),
             _e(", ".join(f"{k} {v}" for k, v in st["by_status"].items()))]
            for stage, st in pt["stages"].items()]
    sc = pt["science_seconds"]
    rows.append(["science_images.seconds", _fmt(sc["n"]), "", _fmt(sc["total_s"], 1),
                 _fmt(sc["median_s"]), _fmt(sc["p95_s"]), _fmt(sc["max_s"]), ""])
    hours = n["projection"].get("calibrate_core_hours_per_night")
    return (_table(["stage", "quadrants", "attempts", "total [s]", "median [s]", "p95 [s]",
                    "max [s]", "outcome"], rows, left=1, text=(7,))
            + '<p class="note">Stages: wall clock <code>finished_at - started_at</code> of the '
              "last attempt in <code>processing</code>; science_images.seconds: the time the "
              "calibration stage measured itself. At tonight's rate a full night (same "
              "assumptions as the projection below, time proportional to pixels) needs "
              f"{_fmt(hours, 0)} core-hours of calibration.</p>")


def _projection(n: dict) -> str:
    p = n["projection"]
    a = p["assumptions"]
    rows = [[_e(k.replace("_", " ")), _bytes(p["per_night_by_kind"][k]), _bytes(v)]
            for k, v in p["per_year_by_kind"].items()]
    rows.append(["<b>total</b>", _bytes(p["bytes_per_night"]), _bytes(p["bytes_per_year"])])
    table = _table(["kind", "per night", "per year"], rows, left=1)
    return (table + '<p class="note">Assumptions: '
            f"{a['exposures_per_night']} object exposures per night, {a['nights_per_year']} "
            f"nights per year, {a['quadrants_per_exposure']} readout quadrants per exposure "
            f"(tonight {_fmt(a['observed_quadrants_per_exposure'], 1)} per exposure: camera "
            f"scale &times;{_fmt(a['camera_scale'])}), full-size quadrants of "
            f"{a['full_quadrant_pixels']:,} pixels (tonight "
            f"{_fmt(a['observed_pixels_per_quadrant'], 0)}: "
            f"pixel scale &times;{_fmt(a['pixel_scale'])}). Raw object files, science products "
            f"and alerts scale with the number of exposures (tonight {a['exposures_tonight']}; "
            f"{_bytes(p['bytes_per_exposure_tonight'])} per exposure as observed); raw "
            "calibration frames and calibration products are a per-night cost; references are "
            "one-off and not projected. Product volume is assumed proportional to pixel "
            "count.</p>")


def _thresholds(n: dict) -> str:
    t = n["thresholds"]
    items = [t["seeing"], *t["maglim"].values(), t["zp_deficit"], t["astrom_rms"],
             t["failure_fraction"], t["bad_fraction"]]
    rows = []
    for th in items:
        better = "&ge;" if th["higher_is_better"] else "&le;"
        worse = "&lt;" if th["higher_is_better"] else "&gt;"
        rows.append([_e(th["name"]), _e(th["unit"]), f"{better} {th['green']:g}",
                     "between", f"{worse} {th['red']:g}", _e(th["doc"])])
    classes = [["", "", "green", "amber", "red", ""] for _ in rows]
    return _table(["quantity", "unit", "green", "amber", "red", "meaning"], rows, left=1,
                  classes=classes, text=(5,))


def render_html(numbers: dict, figures: dict[str, bytes]) -> str:
    """The self-contained report page (figures embedded as base64 PNG)."""
    n = numbers
    maps = "".join(_img(f"focal_plane_{q}.png", figures[f"focal_plane_{q}.png"], q)
                   for q in _MAP_QUANTITIES)
    bodies = {
        "summary": _summary(n),
        "time-series": ('<p class="note">Each panel: quadrant values (faint dots) and exposure '
                        "medians (markers), coloured by filter; exposures flagged red are "
                        "ringed in red; dashed lines: amber and red limits (dotted: red MAGLIM "
                        "limit per filter).</p>"
                        + _img("time_series.png", figures["time_series.png"], "time series")),
        "focal-plane": ('<p class="note">Night median per readout quadrant (all filters); grey: '
                        "no data; outlined amber/red: median beyond the limit; small label at the "
                        "lower left of each CCD: its number.</p>"
                        f'<div class="grid">{maps}</div>'),
        "exposures": _exposure_table(n),
        "candidates": _candidates(n, figures),
        "failures": _failures(n),
        "bad-images": _bad(n),
        "ledger": _ledger(n),
        "processing-time": _processing(n),
        "projection": _projection(n),
        "thresholds": _thresholds(n),
    }
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{title}</h2>{bodies[sid]}</section>'
                       for sid, title in SECTIONS)
    night = n["night"]
    date = f"{night[:4]}-{night[4:6]}-{night[6:]}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>zsds QA {night}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>Night QA report {date} "
        f'<span class="badge {n["status"]}">{n["status"]}</span></h1>'
        f"<p>archive {_e(n['archive_root'])} &middot; generated {_e(n['generated_at'])} &middot; "
        "numbers in report.json</p></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n")


# -- entry point -------------------------------------------------------------------------------
def make_night_report(night: str, config: ZsdsConfig, *, outdir: Path | None = None,
                      thresholds: QAThresholds | None = None,
                      assumptions: ProjectionAssumptions = ProjectionAssumptions()) -> Path:
    """Write the QA report of ``night`` and return the path of its ``index.html``.

    Parameters
    ----------
    night : str
        ``YYYYMMDD`` (UTC date).
    config : ZsdsConfig
    outdir : Path, optional
        Default ``<archive.root>/reports/<night>``. Receives ``index.html`` (self-contained),
        ``report.json`` and the figures as PNG.
    thresholds : QAThresholds, optional
        Default :meth:`QAThresholds.from_config`.
    assumptions : ProjectionAssumptions
        Of the yearly volume projection.
    """
    if len(night) != 8 or not night.isdigit():
        raise ValueError(f"night {night!r} is not YYYYMMDD")
    url = config.database_url
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).exists():
        raise ZsdsError(f"no database at {url.split('///', 1)[-1]}: nothing processed in "
                        f"archive {config.archive.root}")
    engine = make_engine(url)
    try:
        tables = read_night(engine, night)
    finally:
        engine.dispose()
    numbers = night_numbers(tables, config, thresholds=thresholds, assumptions=assumptions)
    figures = _figures(numbers)
    out = Path(outdir) if outdir is not None else report_dir(config, night)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        (out / name).write_bytes(data)
    public = {k: v for k, v in numbers.items() if not k.startswith("_")}
    public["figures"] = sorted(figures)
    _write_atomic(out / "report.json", json.dumps(public, indent=1, allow_nan=False) + "\n")
    page = out / "index.html"
    _write_atomic(page, render_html(numbers, figures))
    return page


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)

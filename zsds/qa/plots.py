"""Figures of the night QA report (matplotlib, PNG bytes out).

Every function takes the DataFrames of :mod:`zsds.qa.metrics` and returns PNG bytes, so the
report can both embed them (base64) and save them beside the HTML. Figures are made with
:class:`matplotlib.figure.Figure`, not pyplot, so the module neither needs nor changes the
pyplot backend (notebooks keep their inline plots).
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd
from astropy.time import Time
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from matplotlib.ticker import MaxNLocator

from ..camera import FULL_SHAPE, load_camera
from .metrics import QUANTITIES, QAThresholds

__all__ = ["FILTER_COLOURS", "FLAG_COLOURS", "time_series_png", "focal_plane_png",
           "candidates_png", "quadrant_corners"]

#: Plot colour of each filter.
FILTER_COLOURS = {"zg": "#2e8b3d", "zr": "#b2182b", "zi": "#6a3d9a"}
#: Colours of the red / amber / green verdicts (also used by the HTML).
FLAG_COLOURS = {"green": "#2e7d32", "amber": "#e69500", "red": "#c62828", "grey": "#9e9e9e"}

_TIME_PANELS = ("seeing", "maglim", "magzp", "zp_deficit", "astrom_rms")
_SHORT = {"seeing": "Seeing FWHM", "maglim": "MAGLIM (5 sigma)", "magzp": "MAGZP",
          "zp_deficit": "ZP deficit", "astrom_rms": "Astrom. RMS", "sky": "Sky"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _ut_hours(jd, night: str) -> np.ndarray:
    midnight = Time(f"{night[:4]}-{night[4:6]}-{night[6:]}T00:00:00", scale="utc").jd
    return (np.asarray(jd, dtype=float) - midnight) * 24.0


def _threshold_lines(ax, thresholds: QAThresholds, qty: str, filters) -> None:
    if qty == "maglim":
        for fc in filters:
            t = thresholds.maglim.get(fc)
            if t is not None:
                ax.axhline(t.red, color=FILTER_COLOURS.get(fc, "k"), ls=":", lw=1)
        return
    t = thresholds.for_quantity(qty)
    if t is not None:
        ax.axhline(t.green, color=FLAG_COLOURS["amber"], ls="--", lw=1)
        ax.axhline(t.red, color=FLAG_COLOURS["red"], ls="--", lw=1)


def time_series_png(per_image: pd.DataFrame, per_exposure: pd.DataFrame, night: str,
                    thresholds: QAThresholds) -> bytes:
    """One panel per quantity against UT hour: quadrants as faint dots, exposure medians as
    filled markers coloured by filter; exposures flagged red are ringed; dashed lines mark the
    amber and red limits (dotted: the red MAGLIM limit of each filter)."""
    n = len(_TIME_PANELS)
    fig = Figure(figsize=(9, 2.0 * n + 0.6), constrained_layout=True)
    axes = fig.subplots(n, 1, sharex=True)
    filters = sorted(set(per_exposure.get("filter_code", []))
                     | set(per_image.get("filter_code", [])))
    for ax, qty in zip(axes, _TIME_PANELS):
        unit = QUANTITIES[qty][1]
        for fc in filters:
            colour = FILTER_COLOURS.get(fc, "k")
            img = per_image[per_image["filter_code"] == fc]
            ax.plot(_ut_hours(img["obsjd"], night), img[qty], ".", ms=3, color=colour, alpha=0.3)
            exp = per_exposure[per_exposure["filter_code"] == fc]
            ax.plot(_ut_hours(exp["obsjd"], night), exp[qty], "o", ms=5, color=colour, label=fc)
        col = f"colour_{qty}"
        if col in per_exposure:
            red = per_exposure[per_exposure[col] == "red"]
            ax.plot(_ut_hours(red["obsjd"], night), red[qty], "o", ms=11, mfc="none",
                    mec=FLAG_COLOURS["red"], mew=1.5)
        _threshold_lines(ax, thresholds, qty, filters)
        ax.set_ylabel(f"{_SHORT[qty]}\n[{unit}]", fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.04, y=0.12)
        if per_exposure.empty or per_exposure[qty].isna().all():
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                    color="grey")
    if filters:
        axes[0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.01), fontsize=8,
                       ncol=len(filters), frameon=False, title=None)
    axes[-1].set_xlabel(f"UT hour of {night[:4]}-{night[4:6]}-{night[6:]}")
    return _png(fig)


def quadrant_corners(ccd_id: int, qid: int) -> np.ndarray:
    """Focal-plane ``(EW, NS)`` corners of a full-size quadrant, degrees, shape (4, 2)."""
    geom = load_camera().quadrant(ccd_id, qid)
    ny, nx = FULL_SHAPE
    xs = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    ys = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ew, ns = geom.pixel_to_focal(xs, ys)
    return np.column_stack([ew, ns])


def focal_plane_png(per_quadrant: pd.DataFrame, qty: str, thresholds: QAThresholds,
                    cmap: str = "viridis") -> bytes:
    """The 64 readout quadrants on the focal plane, filled with the night's median of ``qty``.

    Quadrants without data are grey; the outline of a quadrant whose median is amber or red
    is drawn in that colour. The EW axis increases to the left (east), as on the sky.
    """
    label, unit = QUANTITIES[qty]
    cam = load_camera()
    values = {(int(r.ccd_id), int(r.qid)): getattr(r, qty)
              for r in per_quadrant.itertuples(index=False)} if not per_quadrant.empty else {}
    colours = ({(int(r.ccd_id), int(r.qid)): getattr(r, f"colour_{qty}", "grey")
                for r in per_quadrant.itertuples(index=False)}
               if not per_quadrant.empty and f"colour_{qty}" in per_quadrant else {})
    finite = [v for v in values.values() if v is not None and np.isfinite(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    norm = matplotlib.colors.Normalize(vmin, vmax)
    cm = matplotlib.colormaps[cmap]
    fig = Figure(figsize=(5.6, 5.0), constrained_layout=True)
    ax = fig.subplots()
    for ccd in cam.ccd_ids:
        for qid in cam.qids:
            corners = quadrant_corners(ccd, qid)
            v = values.get((ccd, qid))
            has = v is not None and np.isfinite(v)
            face = cm(norm(v)) if has else "#d9d9d9"
            verdict = colours.get((ccd, qid), "grey")
            edge = FLAG_COLOURS[verdict] if verdict in ("amber", "red") else "white"
            ax.add_patch(Polygon(corners, closed=True, facecolor=face, edgecolor=edge,
                                 lw=0.8 if edge == "white" else 2.0,
                                 zorder=2 if edge == "white" else 3))
            if has:
                c = corners.mean(axis=0)
                r, g, b, _ = cm(norm(v))
                ax.text(c[0], c[1], f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white",
                        zorder=4)
        allc = np.vstack([quadrant_corners(ccd, q) for q in cam.qids])
        ax.text(allc[:, 0].max() - 0.04, allc[:, 1].min() + 0.04, f"{ccd}", ha="left",
                va="bottom", fontsize=6.5, color="#37474f", zorder=5,
                bbox={"facecolor": "white", "alpha": 0.75, "pad": 0.6, "lw": 0})
    ext = cam.focal_plane_extent() * 0.75
    ax.set_xlim(ext, -ext)
    ax.set_ylim(-ext, ext)
    ax.set_aspect("equal")
    ax.set_xlabel("EW [deg] (east left)")
    ax.set_ylabel("NS [deg]")
    ax.set_title(f"{label} [{unit}], night median", fontsize=10)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cm)
    fig.colorbar(sm, ax=ax, shrink=0.8, label=unit)
    if not finite:
        ax.text(0, 0, "no data", ha="center", va="center", color="grey", zorder=6)
    return _png(fig)


def candidates_png(per_image: np.ndarray) -> bytes:
    """Histogram of the number of candidates per processed quadrant image."""
    fig = Figure(figsize=(6, 3), constrained_layout=True)
    ax = fig.subplots()
    per_image = np.asarray(per_image, dtype=int)
    if per_image.size:
        top = int(per_image.max())
        bins = np.arange(-0.5, max(top, 5) + 1.5, 1) if top <= 50 else 40
        ax.hist(per_image, bins=bins, color="#4c72b0", edgecolor="white")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if per_image.size == 0 or per_image.sum() == 0:
        ax.text(0.5, 0.6, "no candidates tonight", transform=ax.transAxes, ha="center",
                color="grey")
    ax.set_xlabel("candidates per quadrant image")
    ax.set_ylabel("quadrant images")
    ax.grid(alpha=0.3)
    return _png(fig)

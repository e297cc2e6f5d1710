"""Consumer-side helpers: a deduplicating, filtering alert sink, summaries and cutout plots."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .packet import deserialize_alert, read_cutout

__all__ = ["AlertSink", "alert_summary", "plot_cutouts"]

_SUMMARY = ("jd", "fid", "programid", "ra", "dec", "magpsf", "sigmapsf", "isdiffpos", "rb",
            "drb", "nbad", "fwhm", "elong", "magdiff", "diffmaglim", "ndethist", "ncovhist")


class AlertSink:
    """Writes packets passing ``accept(candidate)`` to ``outdir/<candid>.avro``, once each.

    Duplicates (same candid, also from an earlier run into the same folder) are skipped.
    """

    def __init__(self, outdir: str | Path, accept: Callable[[Mapping[str, Any]], bool]):
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.accept = accept
        self.seen: set[int] = {int(p.stem) for p in self.outdir.glob("*.avro")
                               if p.stem.isdigit()}
        self.n_written = self.n_duplicate = self.n_rejected = 0

    def __call__(self, value: bytes, message: Any = None) -> bool:
        packet = deserialize_alert(value)
        candid = int(packet["candid"])
        if candid in self.seen:
            self.n_duplicate += 1
            return False
        self.seen.add(candid)
        if not self.accept(packet["candidate"]):
            self.n_rejected += 1
            return False
        tmp = self.outdir / f".{candid}.tmp"
        tmp.write_bytes(value)
        os.replace(tmp, self.outdir / f"{candid}.avro")
        self.n_written += 1
        return True


def alert_summary(packet: Mapping[str, Any]) -> str:
    """Main fields of an alert, one per line."""
    cand = packet["candidate"]
    prv = packet.get("prv_candidates") or []
    ndet = sum(p.get("candid") is not None for p in prv)
    lines = [f"objectId   {packet['objectId']}", f"candid     {packet['candid']}",
             f"schemavsn  {packet['schemavsn']}  publisher {packet['publisher']}"]
    lines += [f"{k:<10} {cand.get(k)}" for k in _SUMMARY]
    lines.append(f"history    {len(prv)} entries: {ndet} detections, {len(prv) - ndet} upper "
                 f"limits; fp_hists {len(packet.get('fp_hists') or [])}")
    return "\n".join(lines)


def plot_cutouts(packet: Mapping[str, Any], path: str | Path) -> Path:
    """Science, template and difference cutouts side by side (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    for ax, key, title in zip(axes, ("cutoutScience", "cutoutTemplate", "cutoutDifference"),
                              ("science", "template", "difference")):
        ax.set_axis_off()
        if packet.get(key) is None:
            ax.set_title(f"{title}: none")
            continue
        data, _ = read_cutout(packet[key])
        finite = data[np.isfinite(data)]
        lo, hi = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
        ax.imshow(data, origin="lower", cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(title)
    fig.suptitle(f"{packet['objectId']}  candid {packet['candid']}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)

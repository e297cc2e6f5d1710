"""Subtraction commands: ``zsds subtract`` and ``zsds rb train``.

:func:`register` adds them to the main Typer app (to be listed in
``zsds.cli._register_optional_commands``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["register", "train_rb"]

rb_app = typer.Typer(help="Real-bogus classifier.", no_args_is_help=True)


def subtract_cmd(
    sci: Path = typer.Argument(..., help="Calibrated science image (WCS, MAGZP)."),
    ref: Path = typer.Argument(..., help="Reference image (WCS, MAGZP)."),
    out: Path = typer.Option(..., "--out", help="Output folder of the products."),
    sci_psf: Optional[Path] = typer.Option(None, "--sci-psf", help="Science PSF (model or stamp)."),
    ref_psf: Optional[Path] = typer.Option(None, "--ref-psf", help="Reference PSF (model or stamp)."),
    threads: int = typer.Option(1, "--threads", min=1, help="FFTW threads."),
    measured_fft: bool = typer.Option(True, help="Measured FFTW plans from the shared wisdom "
                                      "file (processing.fft_wisdom), not estimated ones."),
):
    """ZOGY subtraction and candidate extraction of any calibrated pair."""
    from .config import load_config
    from .stages.subtract import subtract_images

    wisdom = load_config().processing.wisdom_file() if measured_fft else None
    r = subtract_images(sci, ref, sci_psf=sci_psf, ref_psf=ref_psf, out_dir=out, threads=threads,
                        fft_wisdom=wisdom)
    kept = int((r.candidates["index"] >= 0).sum())
    typer.echo(f"{len(r.candidates)} detections, {kept} candidates after filters, "
               f"{r.qa.get('n_streaks', 0)} streaks; "
               f"diffmaglim {r.diffmaglim:.2f}; S_corr mean {r.qa['scorr_mean']:+.3f} "
               f"std {r.qa['scorr_std']:.3f}; {r.qa['n_fft']} FFTs")
    for sfx, p in r.paths.items():
        typer.echo(f"  {p}")


def train_rb(out: Path | None = None, seed: int = 42, n_pairs: int = 30) -> dict:
    """Train the real-bogus model on simulated candidates; returns held-out metrics."""
    import numpy as np

    from .core import realbogus
    from .sim.rbtrain import training_candidates

    t = training_candidates(seed, n_pairs)
    t = t[np.asarray(t["filter_bits"]) == 0]
    test = np.asarray(t["pair"]) % 5 == 0
    X, y = realbogus.feature_matrix(t), np.asarray(t["label"], int)
    held = realbogus.train_model(X[~test], y[~test], seed=seed)
    held["arrays"] = realbogus._load_arrays(held)
    score = realbogus.predict(held, X[test])
    auc = realbogus.roc_auc(score, y[test].astype(bool))
    thr, fpr = realbogus.fpr_at_tpr(score, y[test].astype(bool), 0.95)
    model = realbogus.train_model(X, y, seed=seed)
    model["heldout"] = {"auc": auc, "threshold_95": thr, "fpr_95": fpr,
                        "n_test": int(test.sum()), "n_test_real": int(y[test].sum())}
    path = out or Path(__file__).parent / "data" / realbogus.DEFAULT_MODEL
    realbogus.save_model(model, path)
    return {"path": str(path), **model["heldout"], "n_train": int(len(y)), "n_real": int(y.sum())}


@rb_app.command("train")
def train_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help="Model path (default: the packaged one)."),
    seed: int = typer.Option(42, "--seed", help="Random seed (simulation and forest)."),
    n_pairs: int = typer.Option(30, "--pairs", min=5, help="Simulated image pairs."),
):
    """Train the real-bogus random forest on simulated candidates (deterministic)."""
    res = train_rb(out, seed, n_pairs)
    typer.echo(f"model {res['path']}: {res['n_train']} candidates ({res['n_real']} real); "
               f"held-out AUC {res['auc']:.4f}, FPR {res['fpr_95']:.4f} at 95% completeness "
               f"(rb >= {res['threshold_95']:.3f})")


def register(app: typer.Typer) -> None:
    """Add ``zsds subtract`` and ``zsds rb`` to the main app."""
    app.command("subtract")(subtract_cmd)
    app.add_typer(rb_app, name="rb")

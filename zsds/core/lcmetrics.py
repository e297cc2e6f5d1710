"""Lightcurve metrics: more than 100 documented features per lightcurve.

Three sources, all documented in :data:`METRICS` as ``(name, unit, definition)``:

* the maintained ``light-curve`` package (Malanchev et al. 2021, MNRAS 502, 5147), whose
  feature names and definitions are taken from the package itself;
* a Lomb-Scargle periodogram computed with ``nifty-ls`` (Garrison et al. 2024), with peak
  refinement on a fine grid and the Baluev (2008, MNRAS 385, 1279) false-alarm probability;
* a few of our own: counts, percentiles, Stetson J and L (Stetson 1996, PASP 108, 851) and
  astrometric scatter.

Magnitudes in mag, times in MJD days. Thread-safe: the extractor is built per call.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import gammaln

__all__ = ["METRICS", "MetricsParams", "metric_names", "compute_metrics", "lomb_scargle"]

_Q = (0.01, 0.05, 0.1, 0.25, 0.75, 0.9, 0.95, 0.99)


def _lc_features():
    """(feature, units of each output) of the light-curve package features used."""
    import light_curve as lc

    mag, d, none, magd = "mag", "d", "", "mag/d"
    spec = [(lc.Amplitude(), [mag]), (lc.AndersonDarlingNormal(), [none])]
    spec += [(lc.BeyondNStd(n), [none]) for n in (1.0, 2.0, 3.0, 4.0, 5.0)]
    spec += [(lc.Cusum(), [none]), (lc.Eta(), [none]), (lc.EtaE(), [none]),
             (lc.ExcessVariance(), [none])]
    spec += [(lc.InterPercentileRange(q), [mag]) for q in (0.01, 0.02, 0.05, 0.1, 0.25, 0.4)]
    spec += [(lc.Kurtosis(), [none]), (lc.Skew(), [none]), (lc.StandardDeviation(), [mag]),
             (lc.Mean(), [mag]), (lc.Median(), [mag]), (lc.WeightedMean(), [mag]),
             (lc.MedianAbsoluteDeviation(), [mag]), (lc.MeanVariance(), [none]),
             (lc.ReducedChi2(), [none]), (lc.StetsonK(), [none]), (lc.BiweightScale(), [mag]),
             (lc.QnScale(), [mag]), (lc.Roms(), [none]), (lc.LaflerKinmanStringLength(), [none]),
             (lc.OtsuSplit(), [mag, mag, mag, none]), (lc.LinearFit(), [magd, magd, none]),
             (lc.LinearTrend(), [magd, magd, mag])]
    spec += [(lc.MagnitudePercentageRatio(a, b), [none])
             for a, b in ((0.4, 0.05), (0.25, 0.05), (0.25, 0.1), (0.1, 0.02))]
    spec += [(lc.MaximumSlope(), [magd])]
    spec += [(lc.MedianBufferRangePercentage(q), [none]) for q in (0.05, 0.1, 0.2, 0.3)]
    spec += [(lc.PercentAmplitude(), [mag])]
    spec += [(lc.PercentDifferenceMagnitudePercentile(q), [none])
             for q in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4)]
    spec += [(lc.Duration(), [d]), (lc.MaximumTimeInterval(), [d]), (lc.MinimumTimeInterval(), [d]),
             (lc.ObservationCount(), [none]), (lc.TimeMean(), [d]), (lc.TimeStandardDeviation(), [d])]
    return spec


def _extractor():
    import light_curve as lc

    spec = _lc_features()
    return lc.Extractor(*(f for f, _ in spec)), [u for _, units in spec for u in units]


_OWN = [
    ("nobs", "", "number of detections matched to the object (all, flagged or not)"),
    ("ngoodobs", "", "number of good detections (unflagged, good image, finite mag) used by every metric"),
    ("nflagged", "", "nobs - ngoodobs"),
    ("nnights", "", "number of distinct nights (UTC dates of MJD) with a good detection"),
    *[(f"mag_p{round(100 * q):02d}", "mag", f"{round(100 * q)}th percentile of the good magnitudes")
      for q in _Q],
    ("mag_min", "mag", "brightest good magnitude"),
    ("mag_max", "mag", "faintest good magnitude"),
    ("magerr_median", "mag", "median magnitude error"),
    ("magerr_mean", "mag", "mean magnitude error"),
    ("weighted_mean_err", "mag", "uncertainty of the weighted mean, (sum 1/sigma^2)^-1/2"),
    ("rms", "mag", "root mean square of (m - unweighted mean)"),
    ("robust_sigma", "mag", "1.4826 x median absolute deviation from the median"),
    ("frac_brighter_3sig", "", "fraction of points brighter than the weighted mean by > 3 sigma_i"),
    ("frac_fainter_3sig", "", "fraction of points fainter than the weighted mean by > 3 sigma_i"),
    ("stetson_j", "", "Stetson (1996) J: mean of sgn(P) sqrt|P|, P = d_i d_j for consecutive points "
                      "closer than pair_dt_d, else d_i^2 - 1; d = sqrt(n/(n-1)) (m - wmean)/sigma"),
    ("stetson_l", "", "Stetson (1996) L = J K / 0.798"),
    ("max_per_night", "", "largest number of good detections in one night"),
    ("mjd_first", "d", "MJD of the first good detection"),
    ("mjd_last", "d", "MJD of the last good detection"),
    ("pos_rms_arcsec", "arcsec", "RMS distance of the detections from their mean position"),
    ("ls_freq_1", "1/d", "frequency of the highest Lomb-Scargle peak (nifty-ls, standard "
                         "normalisation, floating mean, errors as weights), refined on a fine grid "
                         "with a three-harmonic model (non-sinusoidal shapes); of two daily "
                         "aliases whose fits differ by < 10% in chi-square, the lower frequency"),
    ("ls_period_1", "d", "1 / ls_freq_1"),
    ("ls_power_1", "", "Lomb-Scargle power of peak 1 on the coarse grid (0..1)"),
    ("ls_period_2", "d", "period of the second candidate peak (candidates: the highest peaks "
     "further than min(5/baseline, 0.25 c/d) apart, ranked by a 3-harmonic fit)"),
    ("ls_power_2", "", "power of peak 2"),
    ("ls_period_3", "d", "period of the third highest distinct peak"),
    ("ls_power_3", "", "power of peak 3"),
    ("ls_log10_fap", "", "log10 false-alarm probability of peak 1 (Baluev 2008 approximation)"),
    ("ls_amplitude", "mag", "semi-amplitude of the weighted sinusoid fit at ls_freq_1"),
    ("ls_power_median", "", "median power over the frequency grid"),
    ("ls_power_snr", "", "(ls_power_1 - median power) / (1.4826 MAD of the power)"),
    ("ls_nfreq", "", "number of frequencies of the coarse grid"),
]


def _build_metrics() -> list[tuple[str, str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex, units = _extractor()
    lc_rows = [(f"lc_{n}", u, f"light-curve: {d}") for n, u, d in zip(ex.names, units, ex.descriptions)]
    return lc_rows + list(_OWN)


#: (name, unit, definition) of every metric, in column order.
METRICS: list[tuple[str, str, str]] = _build_metrics()


def metric_names() -> list[str]:
    """Names of the metric columns, in order."""
    return [m[0] for m in METRICS]


class MetricsParams:
    """Settings of the metrics (periodogram grid, pairing of Stetson J)."""

    def __init__(self, *, min_period_d: float = 0.05, max_period_baselines: float = 2.0,
                 samples_per_peak: int = 10, refine_points: int = 100, pair_dt_d: float = 0.1,
                 min_points: int = 5, refine_nterms: int = 3, n_candidates: int = 5,
                 candidate_sep_baselines: float = 5.0, daily_alias_chi2_tolerance: float = 0.1,
                 refine_halfwidth_steps: float = 1.0):
        self.min_period_d = min_period_d
        self.max_period_baselines = max_period_baselines
        self.samples_per_peak = samples_per_peak
        self.refine_points = refine_points
        self.pair_dt_d = pair_dt_d
        self.min_points = min_points
        self.refine_nterms = refine_nterms
        self.n_candidates = n_candidates
        self.candidate_sep_baselines = candidate_sep_baselines
        self.daily_alias_chi2_tolerance = daily_alias_chi2_tolerance
        #: half-width of the harmonic refinement around a coarse peak, in coarse-grid steps
        self.refine_halfwidth_steps = refine_halfwidth_steps


def _ls_power(t, y, dy, fmin, fmax, nf):
    import nifty_ls
    res = nifty_ls.lombscargle(t, y, dy, fmin=fmin, fmax=fmax, Nf=nf, normalization="standard")
    return res.freq(), np.asarray(res.power, float)


def _harmonic_power(t, y, dy, freqs, nterms):
    """Multi-harmonic periodogram, 1 - chi2(f) / chi2_0, by batched weighted least squares.

    Plain numpy (pseudo-inverse), so degenerate samplings give a poor fit, never an abort.
    """
    w = 1.0 / dy**2
    phase = 2 * np.pi * freqs[:, None] * t[None, :]
    cols = [np.ones_like(phase)]
    for k in range(1, nterms + 1):
        cols += [np.sin(k * phase), np.cos(k * phase)]
    a = np.stack(cols, axis=-1) * np.sqrt(w)[None, :, None]          # (F, N, P)
    b = y * np.sqrt(w)
    coef = np.einsum("fpn,n->fp", np.linalg.pinv(a), b)
    chi2 = np.sum((b[None, :] - np.einsum("fnp,fp->fn", a, coef)) ** 2, axis=1)
    chi2_0 = np.sum(w * (y - np.sum(w * y) / np.sum(w)) ** 2)
    return 1.0 - chi2 / chi2_0


def _peaks(freq, power, sep, n: int = 3):
    """Up to ``n`` highest local maxima, each further than ``sep`` from the higher ones."""
    inner = np.flatnonzero((power[1:-1] >= power[:-2]) & (power[1:-1] >= power[2:])) + 1
    cand = inner[np.argsort(power[inner])[::-1]]
    chosen: list[int] = []
    for i in cand:
        if all(abs(freq[i] - freq[j]) > sep for j in chosen):
            chosen.append(i)
        if len(chosen) == n:
            break
    return chosen


def _prefer_lower_daily_alias(ranked, tolerance: float):
    """Put first the lowest-frequency daily alias (a whole number of cycles per day below the
    best) whose harmonic-fit chi-square is within ``1 + tolerance`` of the best's.

    Night-time sampling leaves ``f`` and ``f + k`` c/d nearly degenerate; periods are spread
    about log-uniformly (prior density proportional to 1/f), so of two fits that are nearly as
    good the lower frequency is the more probable.
    """
    best = ranked[0]
    for c in sorted(ranked[1:], key=lambda c: c[0]):
        d = best[0] - c[0]
        if d > 0.5 and abs(d - round(d)) < 0.02 and 1 - c[2] <= (1 + tolerance) * (1 - best[2]):
            return [c] + [x for x in ranked if x is not c]
    return ranked


def _rank_by_harmonic_fit(refined, nterms: int = 3):
    """Order candidate peaks ``(freq, grid power, harmonic power)`` by the harmonic fit.

    The grid's single-sine power often puts a sampling alias (1/day, the in-night spacing)
    above the true frequency for non-sinusoidal shapes; the multi-harmonic fit separates them.
    A candidate at 1/k of another's frequency (k <= ``nterms``) fits as well with k harmonics;
    it wins only with a clearly better fit (2% more power), so a sine is not reported at k
    times its period.
    """
    def score(c):
        f, _, pw = c
        for g, _, pw_g in refined:
            if any(abs(k * f / g - 1) < 0.01 for k in range(2, nterms + 1)) and pw < 1.02 * pw_g:
                return pw - 1.0  # subharmonic of an equally good candidate
        return pw
    return sorted(refined, key=score, reverse=True)


def _baluev_log10_fap(z, n, fmax, t):
    if not (0 < z < 1) or n < 5:
        return np.nan
    w = fmax * np.sqrt(4 * np.pi * np.var(t))
    log_gamma = 0.5 * np.log(2.0 / n) + gammaln(0.5 * n) - gammaln(0.5 * (n - 1))
    tau = np.exp(log_gamma + np.log(w) + 0.5 * (n - 4) * np.log1p(-z) + 0.5 * np.log(z))
    single = np.exp(0.5 * (n - 3) * np.log1p(-z))
    fap = 1.0 - (1.0 - single) * np.exp(-tau)
    return float(np.log10(max(fap, 1e-300)))


def _sine_amplitude(t, y, dy, f):
    w = 1.0 / dy**2
    a = np.column_stack([np.ones_like(t), np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)])
    coef = np.linalg.lstsq(a * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    return float(np.hypot(coef[1], coef[2]))


def lomb_scargle(t, y, dy, params: MetricsParams | None = None) -> dict[str, float]:
    """Lomb-Scargle periodogram metrics (``ls_*`` of :data:`METRICS`) of one lightcurve."""
    p = params or MetricsParams()
    out = {name: np.nan for name, _, _ in _OWN if name.startswith("ls_")}
    base = float(t.max() - t.min()) if len(t) else 0.0
    if len(t) < p.min_points or base <= 0:
        return out
    fmin, fmax = 1.0 / (p.max_period_baselines * base), 1.0 / p.min_period_d
    if fmin >= fmax:
        return out
    nf = int(np.ceil((fmax - fmin) * base * p.samples_per_peak)) + 1
    t0 = t - t.min()
    freq, power = _ls_power(t0, y, dy, fmin, fmax, nf)
    good = np.isfinite(power)
    freq, power = freq[good], power[good]
    # candidates: the highest peaks of distinct alias families (side lobes of a peak lie
    # within a few 1/baseline of it; daily aliases 1 c/d apart)
    sep = min(p.candidate_sep_baselines / base, 0.25)
    peaks = _peaks(freq, power, sep, p.n_candidates) if len(power) > 2 else []
    if not peaks:
        return out
    df = (freq[1] - freq[0]) * p.refine_halfwidth_steps
    refined = []
    for i in peaks:
        f_lo, f_hi = max(freq[i] - df, fmin * 0.5), freq[i] + df
        ff = np.linspace(f_lo, f_hi, p.refine_points)
        pp = _harmonic_power(t0, y, dy, ff, p.refine_nterms)
        k = int(np.nanargmax(pp))
        refined.append((ff[k], power[i], pp[k]))
    refined = _prefer_lower_daily_alias(_rank_by_harmonic_fit(refined, p.refine_nterms),
                                        p.daily_alias_chi2_tolerance)
    med = float(np.median(power))
    mad = 1.4826 * float(np.median(np.abs(power - med)))
    out.update(ls_freq_1=refined[0][0], ls_period_1=1.0 / refined[0][0], ls_power_1=refined[0][1],
               ls_log10_fap=_baluev_log10_fap(refined[0][1], len(t), fmax, t0),
               ls_amplitude=_sine_amplitude(t0, y, dy, refined[0][0]),
               ls_power_median=med, ls_power_snr=(refined[0][1] - med) / mad if mad > 0 else np.nan,
               ls_nfreq=float(nf))
    for k, (f, pw, _) in enumerate(refined[1:3], start=2):
        out[f"ls_period_{k}"], out[f"ls_power_{k}"] = 1.0 / f, pw
    return out


def _stetson(t, m, e, pair_dt):
    n = len(m)
    w = 1.0 / e**2
    wmean = np.sum(w * m) / np.sum(w)
    d = np.sqrt(n / (n - 1.0)) * (m - wmean) / e
    prods, i = [], 0
    while i < n:
        if i + 1 < n and t[i + 1] - t[i] < pair_dt:
            prods.append(d[i] * d[i + 1])
            i += 2
        else:
            prods.append(d[i] ** 2 - 1.0)
            i += 1
    prods = np.asarray(prods)
    j = float(np.mean(np.sign(prods) * np.sqrt(np.abs(prods))))
    k = float(np.mean(np.abs(d)) / np.sqrt(np.mean(d**2)))
    return j, j * k / 0.798


def _own(t, m, e, pos_rms, counts, params) -> dict[str, float]:
    out = dict(counts)
    n = len(m)
    if n == 0:
        return out
    w = 1.0 / e**2
    wmean = np.sum(w * m) / np.sum(w)
    med = np.median(m)
    pct = np.percentile(m, [100 * q for q in _Q])
    out.update({f"mag_p{round(100 * q):02d}": v for q, v in zip(_Q, pct)})
    out.update(mag_min=m.min(), mag_max=m.max(), magerr_median=np.median(e), magerr_mean=e.mean(),
               weighted_mean_err=1.0 / np.sqrt(np.sum(w)), rms=np.sqrt(np.mean((m - m.mean()) ** 2)),
               robust_sigma=1.4826 * np.median(np.abs(m - med)),
               frac_brighter_3sig=np.mean((wmean - m) > 3 * e),
               frac_fainter_3sig=np.mean((m - wmean) > 3 * e),
               max_per_night=float(np.unique(np.floor(t), return_counts=True)[1].max()),
               mjd_first=t.min(), mjd_last=t.max(), pos_rms_arcsec=pos_rms)
    if n >= 2:
        out["stetson_j"], out["stetson_l"] = _stetson(t, m, e, params.pair_dt_d)
    return out


def compute_metrics(t, mag, mag_err, good, *, ra=None, dec=None,
                    params: MetricsParams | None = None) -> dict[str, float]:
    """All metrics of :data:`METRICS` for one lightcurve.

    Parameters
    ----------
    t : array of float, shape (N,)
        Observation times, MJD.
    mag, mag_err : array of float, shape (N,)
        Magnitude and 1-sigma error, mag.
    good : array of bool, shape (N,)
        Detection is good (unflagged, good image); only good detections enter the metrics,
        except ``nobs`` and ``nflagged``.
    ra, dec : array of float, shape (N,), optional
        Positions of the detections, degrees (for ``pos_rms_arcsec``).
    params : MetricsParams, optional

    Returns
    -------
    dict
        ``{name: value}`` for every name of :data:`METRICS` (NaN where undefined).
    """
    p = params or MetricsParams()
    t, m, e = (np.asarray(a, float) for a in (t, mag, mag_err))
    good = np.asarray(good, bool) & np.isfinite(m) & np.isfinite(e) & (e > 0) & np.isfinite(t)
    order = np.argsort(t[good], kind="stable")
    tg, mg, eg = t[good][order], m[good][order], e[good][order]
    counts = {"nobs": float(len(t)), "ngoodobs": float(good.sum()),
              "nflagged": float(len(t) - good.sum()),
              "nnights": float(len(np.unique(np.floor(tg)))) if len(tg) else 0.0}
    pos_rms = _pos_rms(ra, dec, good) if ra is not None else np.nan
    out = {name: np.nan for name in metric_names()}
    out.update(_own(tg, mg, eg, pos_rms, counts, p))
    if len(tg) >= p.min_points:
        out.update(_lc_values(tg, mg, eg))
        out.update(lomb_scargle(tg, mg, eg, p))
    return out


def _lc_values(t, m, e) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex, _ = _extractor()
    values = ex(t, m, e, fill_value=np.nan, sorted=True, check=False)
    return {f"lc_{n}": float(v) for n, v in zip(ex.names, values)}


def _pos_rms(ra, dec, good) -> float:
    ra, dec = np.asarray(ra, float)[good], np.asarray(dec, float)[good]
    if len(ra) < 2:
        return np.nan
    dx = (ra - np.mean(ra)) * np.cos(np.radians(np.mean(dec))) * 3600.0
    dy = (dec - np.mean(dec)) * 3600.0
    return float(np.sqrt(np.mean(dx**2 + dy**2)))

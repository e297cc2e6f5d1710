"""The operations database schema (SQLAlchemy Core), portable to SQLite and PostgreSQL.

Tables and what makes re-running idempotent (the unique keys):

======================  ==============================================================  ==================================
table                   one row per                                                     unique key
======================  ==============================================================  ==================================
``exposures``           camera exposure (all CCDs)                                      ``expid``
``raw_files``           raw CCD file in ``raw/``                                        ``(expid, ccd_id)``, ``filename``
``quadrant_images``     readout quadrant of a raw file, with raw QA and status          ``(expid, ccd_id, qid)``
``quarantine``          rejected input file                                             ``(filename, sha256)``
``calibrations``        calibration product (bias, hifreqflat, badpix)                  ``(caltype, night, filter_code,
                                                                                        ccd_id, qid)``
``processing``          run of a stage on a quadrant (status, message)                  ``(stage, expid, ccd_id, qid)``
``reference_images``    reference co-add (filled by the reference stage)                ``(field_id, filter_code, ccd_id,
                                                                                        qid, version)``
``objects``             astrophysical object (association of candidates)                ``object_id``
``candidates``          difference-image candidate                                      ``candid``
``alerts``              alert packet                                                    ``candid``
``streaks``             trail of a fast-moving object in a difference image             ``streakid``
``object_counters``     objectId counter of a year and field-quadrant block             ``(year, block)``
``api_tokens``          API token of the archive API (sha256 hash only)                 ``token_hash``
``product_checksums``   archived product file (sha256 and size at write/record time)    ``path``
``schema_info``         key/value (schema version)                                      ``key``
======================  ==============================================================  ==================================

Conventions: times are JD (UTC) in ``Double`` columns; ``night`` is the UTC date
``YYYYMMDD``; archive paths are stored relative to the archive root with ``/`` separators;
row timestamps are timezone-aware UTC and are set only when a row is created or its content
changes.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, DateTime, Double, ForeignKey, Index,
                        Integer, MetaData, String, Table, Text, UniqueConstraint)

__all__ = ["metadata", "SCHEMA_VERSION", "exposures", "raw_files", "quadrant_images",
           "quarantine", "calibrations", "processing", "science_images", "reference_images", "objects",
           "candidates", "alerts", "object_counters", "schema_info", "product_checksums", "api_tokens",
           "streaks"]

#: Bumped whenever a table changes incompatibly.
SCHEMA_VERSION = "2"

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

_ts = dict(type_=DateTime(timezone=True))

schema_info = Table(
    "schema_info", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

exposures = Table(
    "exposures", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("expid", BigInteger, nullable=False, unique=True),
    Column("night", String(8), nullable=False, index=True, doc="UTC date YYYYMMDD"),
    Column("filefracday", String(14), nullable=False),
    Column("obsjd", Double, nullable=False),
    Column("imgtype", String(16), nullable=False, doc="object, bias, flat, dark"),
    Column("filter_code", String(2), nullable=False, doc="zg, zr, zi; OO for bias, dk dark"),
    Column("filterid", Integer, nullable=False),
    Column("field_id", Integer, nullable=False),
    Column("programid", Integer, nullable=False),
    Column("exptime", Double, nullable=False, doc="s"),
    Column("airmass", Double),
    Column("ra", Double, doc="TELRAD, deg"),
    Column("dec", Double, doc="TELDECD, deg"),
    Column("created_at", **_ts),
)

raw_files = Table(
    "raw_files", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("expid", BigInteger, ForeignKey("exposures.expid"), nullable=False),
    Column("ccd_id", Integer, nullable=False),
    Column("filename", String(64), nullable=False, unique=True),
    Column("path", String(256), nullable=False, doc="relative to the archive root"),
    Column("sha256", String(64), nullable=False, index=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("night", String(8), nullable=False, index=True),
    Column("imgtype", String(16), nullable=False),
    Column("filter_code", String(2), nullable=False),
    Column("status", String(16), nullable=False, default="ingested"),
    Column("created_at", **_ts),
    UniqueConstraint("expid", "ccd_id"),
)

quadrant_images = Table(
    "quadrant_images", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("raw_file_id", Integer, ForeignKey("raw_files.id", ondelete="CASCADE"),
           nullable=False),
    Column("expid", BigInteger, nullable=False),
    Column("ccd_id", Integer, nullable=False),
    Column("qid", Integer, nullable=False),
    Column("rcid", Integer, nullable=False),
    Column("nx", Integer, nullable=False),
    Column("ny", Integer, nullable=False),
    Column("n_overscan", Integer, nullable=False),
    Column("gain", Double, doc="e-/ADU (GAIN)"),
    Column("read_noise", Double, doc="e- (READNOI)"),
    Column("saturate", Double, doc="raw ADU (SATURATE)"),
    Column("bias_level", Double, doc="median overscan level, ADU"),
    Column("bias_row_range", Double, doc="max - min of the smoothed row bias, ADU"),
    Column("overscan_noise", Double, doc="robust RMS of the overscan, ADU"),
    Column("saturated_fraction", Double),
    Column("median_counts", Double, doc="median overscan-corrected linearised DN"),
    Column("status", String(16), nullable=False, default="raw",
           doc="raw -> calibrated -> subtracted ...; failed"),
    Column("status_message", Text),
    Column("updated_at", **_ts),
    # -- filled by the subtraction stage; used for alert upper limits (zsds.alerts.history)
    Column("pid", BigInteger, doc="processing ID (zsds.alerts.ids.make_pid)"),
    Column("diffmaglim", Double, doc="5-sigma limiting mag of the difference image"),
    Column("ra_center", Double, doc="footprint centre, deg"),
    Column("dec_center", Double, doc="footprint centre, deg"),
    Column("footprint_radius", Double, doc="radius circumscribing the footprint, deg"),
    Column("footprint", Text, doc="JSON [[ra, dec] x 4] corners, deg (optional)"),
    UniqueConstraint("expid", "ccd_id", "qid"),
    Index("ix_quadrant_images_dec_center", "dec_center"),
)

quarantine = Table(
    "quarantine", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("filename", String(256), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("source_path", Text, nullable=False),
    Column("quarantine_path", String(512), doc="relative to the archive root; NULL if unreadable"),
    Column("reason", Text, nullable=False),
    Column("created_at", **_ts),
    UniqueConstraint("filename", "sha256"),
)

calibrations = Table(
    "calibrations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("caltype", String(16), nullable=False, doc="bias, hifreqflat, badpix"),
    Column("night", String(8), nullable=False),
    Column("filter_code", String(2), nullable=False, doc="OO for bias"),
    Column("ccd_id", Integer, nullable=False),
    Column("qid", Integer, nullable=False),
    Column("path", String(512), nullable=False),
    Column("unc_path", String(512)),
    Column("log_path", String(512)),
    Column("sha256", String(64), nullable=False),
    Column("n_frames", Integer, nullable=False),
    Column("mid_jd", Double, nullable=False, doc="mean OBSJD of the inputs"),
    Column("valid_from_jd", Double, nullable=False),
    Column("valid_to_jd", Double, nullable=False),
    Column("status", String(16), nullable=False, default="valid", doc="valid or bad"),
    Column("qa", Text, doc="JSON of QA numbers"),
    Column("created_at", **_ts),
    Column("updated_at", **_ts),
    UniqueConstraint("caltype", "night", "filter_code", "ccd_id", "qid"),
    Index("ix_calibrations_lookup", "caltype", "ccd_id", "qid", "filter_code"),
)

processing = Table(
    "processing", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("stage", String(32), nullable=False),
    Column("expid", BigInteger, nullable=False),
    Column("ccd_id", Integer, nullable=False),
    Column("qid", Integer, nullable=False),
    Column("status", String(16), nullable=False, doc="pending, running, done, failed"),
    Column("message", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("started_at", **_ts),
    Column("finished_at", **_ts),
    UniqueConstraint("stage", "expid", "ccd_id", "qid"),
)

science_images = Table(
    "science_images", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("expid", BigInteger, nullable=False),
    Column("ccd_id", Integer, nullable=False),
    Column("qid", Integer, nullable=False),
    Column("rcid", Integer, nullable=False),
    Column("pid", BigInteger, nullable=False, unique=True,
           doc="processing ID <nid><7-digit day fraction><rcid 2 digits>"),
    Column("night", String(8), nullable=False, index=True),
    Column("filefracday", String(14), nullable=False),
    Column("obsjd", Double, nullable=False),
    Column("field_id", Integer, nullable=False),
    Column("filter_code", String(2), nullable=False),
    Column("programid", Integer, nullable=False),
    Column("path", String(512), nullable=False, doc="sciimg.fits, relative to the archive root"),
    Column("status", Integer, nullable=False, doc="1 good, 0 bad (ZTF STATUS)"),
    Column("infobits", Integer, nullable=False, doc="QA bits, zsds.core.qaflags"),
    Column("reasons", Text),
    Column("magzp", Double), Column("magzpunc", Double), Column("magzprms", Double),
    Column("clrcoeff", Double), Column("clrcounc", Double),
    Column("maglim", Double, doc="5-sigma point-source limit, AB mag"),
    Column("seeing_arcsec", Double, doc="PSF FWHM at the centre"),
    Column("sky", Double, doc="median background, DN"),
    Column("sky_rms", Double, doc="median background RMS, DN"),
    Column("n_sources", Integer), Column("n_calibrators", Integer),
    Column("astrom_rms_ra", Double, doc="arcsec"), Column("astrom_rms_dec", Double, doc="arcsec"),
    Column("astrom_nmatch", Integer),
    Column("airmass", Double),
    Column("ra", Double, doc="centre, deg"), Column("dec", Double, doc="centre, deg"),
    Column("radius_deg", Double, doc="centre-to-corner distance, deg"),
    Column("footprint", Text, doc="JSON [[ra, dec] x 4] corners"),
    Column("seconds", Double, doc="processing time of the stage"),
    Column("created_at", **_ts),
    Column("updated_at", **_ts),
    UniqueConstraint("expid", "ccd_id", "qid"),
    Index("ix_science_images_position", "field_id", "filter_code", "ccd_id", "qid"),
)

reference_images = Table(
    "reference_images", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("field_id", Integer, nullable=False),
    Column("filter_code", String(2), nullable=False),
    Column("ccd_id", Integer, nullable=False),
    Column("qid", Integer, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("path", String(512), nullable=False),
    Column("n_frames", Integer, nullable=False),
    Column("jd_start", Double),
    Column("jd_end", Double),
    Column("status", String(16), nullable=False, default="valid"),
    Column("qa", Text),
    Column("zarr_group", String(256), doc="store/group of the version, relative to the archive root"),
    Column("magzp", Double, doc="zero point of the co-add (the common zero point), AB mag"),
    Column("maglim", Double, doc="5-sigma point-source limit of the co-add, AB mag"),
    Column("seeing_arcsec", Double, doc="PSF FWHM of the co-add at the centre"),
    Column("inputs_hash", String(64), doc="sha256 of the sorted contributing pids"),
    Column("inputs", Text, doc="JSON list of the contributing pids"),
    Column("created_at", **_ts),
    UniqueConstraint("field_id", "filter_code", "ccd_id", "qid", "version"),
)

objects = Table(
    "objects", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("object_id", String(16), nullable=False, unique=True, doc="ZTFyyaaaaaaa"),
    Column("ra", Double, nullable=False),
    Column("dec", Double, nullable=False),
    Column("ndet", Integer, nullable=False, default=0),
    Column("first_jd", Double),
    Column("last_jd", Double),
    Column("created_at", **_ts),
    Column("updated_at", **_ts),
    Index("ix_objects_dec", "dec"),
)

object_counters = Table(
    "object_counters", metadata,
    Column("year", Integer, primary_key=True, autoincrement=False, doc="4-digit year"),
    Column("block", Integer, primary_key=True, autoincrement=False,
           doc="field-quadrant block of the name space (zsds.alerts.objects.counter_block)"),
    Column("next_index", BigInteger, nullable=False,
           doc="running number of the block's next object"),
)

candidates = Table(
    "candidates", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("candid", BigInteger, nullable=False, unique=True),
    Column("pid", BigInteger, nullable=False),
    Column("expid", BigInteger, nullable=False, index=True),
    Column("ccd_id", Integer, nullable=False),
    Column("qid", Integer, nullable=False),
    Column("object_id", String(16), ForeignKey("objects.object_id"), index=True),
    Column("jd", Double, nullable=False),
    Column("ra", Double, nullable=False),
    Column("dec", Double, nullable=False),
    Column("isdiffpos", Boolean, nullable=False),
    Column("magpsf", Double),
    Column("sigmapsf", Double),
    Column("scorr", Double),
    Column("rb", Double),
    Column("status", String(16), nullable=False, default="new"),
    Column("created_at", **_ts),
    # -- for alert histories (zsds.alerts.history)
    Column("fid", Integer),
    Column("programid", Integer),
    Column("diffmaglim", Double),
    Column("payload", Text, doc="JSON of the candidate's ZTF alert-schema fields"),
    Index("ix_candidates_dec", "dec"),
)

streaks = Table(
    "streaks", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("streakid", BigInteger, nullable=False, unique=True,
           doc="pid * 10**6 + 900000 + index (zsds.stages.streaks.streak_id)"),
    Column("streak_index", Integer, nullable=False,
           doc="row of the quadrant's *_diffimstreaks.fits"),
    Column("pid", BigInteger, nullable=False),
    Column("expid", BigInteger, nullable=False, index=True),
    Column("ccd_id", Integer, nullable=False),
    Column("qid", Integer, nullable=False),
    Column("rcid", Integer, nullable=False),
    Column("field", Integer, nullable=False),
    Column("programid", Integer),
    Column("fid", Integer),
    Column("jd", Double, nullable=False, doc="JD (UTC) of the exposure start, as candidates.jd"),
    Column("ra", Double, nullable=False, doc="centre of the trail, deg"),
    Column("dec", Double, nullable=False),
    Column("ra1", Double, nullable=False, doc="endpoint 1, deg"),
    Column("dec1", Double, nullable=False),
    Column("ra2", Double, nullable=False, doc="endpoint 2, deg"),
    Column("dec2", Double, nullable=False),
    Column("x1", Double, doc="endpoint 1, FITS 1-based pixel"),
    Column("y1", Double),
    Column("x2", Double),
    Column("y2", Double),
    Column("length_px", Double, nullable=False),
    Column("length_arcsec", Double),
    Column("pa_deg", Double, nullable=False, doc="position angle on the sky, E of N, [0, 180)"),
    Column("isdiffpos", Boolean, nullable=False),
    Column("flux", Double, doc="total flux, science DN"),
    Column("flux_err", Double),
    Column("snr", Double, doc="total S/N of the trail photometry"),
    Column("mag", Double),
    Column("sigmag", Double),
    Column("created_at", **_ts),
    Index("ix_streaks_dec", "dec"),
    Index("ix_streaks_jd", "jd"),
)

alerts = Table(
    "alerts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("candid", BigInteger, ForeignKey("candidates.candid"), nullable=False, unique=True),
    Column("object_id", String(16), nullable=False),
    Column("topic", String(64)),
    Column("path", String(512)),
    Column("status", String(16), nullable=False, default="pending", doc="pending, sent, failed"),
    Column("created_at", **_ts),
    Column("sent_at", **_ts),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, index=True, doc="holder of the token"),
    Column("token_hash", String(64), nullable=False, unique=True, doc="sha256 hex of the token"),
    Column("programs", String(64), nullable=False, doc="entitled programids, e.g. '2,3'"),
    Column("created_at", **_ts),
    Column("revoked_at", **_ts),
)

product_checksums = Table(
    "product_checksums", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", String(512), nullable=False, unique=True, doc="relative to the archive root"),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", **_ts),
    Column("updated_at", **_ts),
)

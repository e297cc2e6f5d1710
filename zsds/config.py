"""Configuration: one YAML file, environment overrides, validated on load.

Layers, later ones winning:

1. the packaged defaults ``zsds/data/zsds.yaml`` (every key documented there);
2. a user file, given as ``zsds --config FILE`` or ``$ZSDS_CONFIG``;
3. environment variables ``ZSDS__<SECTION>__<KEY>`` (values parsed as YAML scalars);
4. explicit overrides passed to :func:`load_config`.

Unknown keys and bad values raise :class:`~zsds.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

__all__ = ["ZsdsConfig", "load_config", "ENV_PREFIX"]

ENV_PREFIX = "ZSDS__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchiveConfig(_Section):
    root: Path = Field(description="Root directory of the archive.")


class RefcatConfig(_Section):
    path: Path | None = Field(None, description="Reference catalogue; default <root>/refcat.")


class DatabaseConfig(_Section):
    url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in the archive.")


class DaskConfig(_Section):
    cluster: str = "local"
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "4GiB"
    slurm_profile: str = "local-slurm"
    dashboard_address: str = ":8787"

    @field_validator("cluster")
    @classmethod
    def _known_cluster(cls, value: str) -> str:
        if value in ("local", "slurm") or value.startswith(("tcp://", "tls://")):
            return value
        msg = f"must be 'local', 'slurm' or a scheduler address tcp://host:port, not {value!r}"
        raise ValueError(msg)


class KafkaConfig(_Section):
    """The alert stream: broker and the nightly alert topics (``zsds alerts topics``)."""

    bootstrap_servers: str | None = None
    topic_partitions: int = Field(4, ge=1, description="partitions of a new alert topic")
    topic_replication_factor: int = Field(1, ge=1, description="replicas of each partition")
    topic_programids: list[int] = Field(default_factory=lambda: [1, 2, 3],
                                        description="programs with a topic every night")
    topic_configs: dict[str, str] = Field(
        default_factory=lambda: {"retention.ms": "604800000", "cleanup.policy": "delete",
                                 "max.message.bytes": "8388608"},
        description="Kafka topic-level settings of new alert topics")

    @field_validator("topic_configs", mode="before")
    @classmethod
    def _config_strings(cls, value: Any) -> Any:
        # Kafka takes every topic setting as a string; YAML gives numbers and booleans.
        if isinstance(value, dict):
            return {str(k): (str(v).lower() if isinstance(v, bool) else str(v))
                    for k, v in value.items()}
        return value


class ProcessingConfig(_Section):
    fft_threads: int = Field(1, ge=1)
    measured_fft: bool = Field(True, description="FFTW_MEASURE plans shared through a wisdom "
                               "file (2-3x faster transforms); false: FFTW_ESTIMATE plans")
    fft_wisdom: Path | None = Field(None, description="the shared wisdom file (default "
                                    "~/.cache/zsds/fftw-wisdom.bin); a shared path on a cluster")

    def wisdom_file(self) -> Path | None:
        """The FFTW wisdom file of measured plans, or None for estimated plans."""
        if not self.measured_fft:
            return None
        from .io.fftwisdom import default_wisdom_path
        return self.fft_wisdom or default_wisdom_path()


class CalibrateConfig(_Section):
    """Instrumental calibration of readout quadrants (zsds/stages/calibrate.py)."""

    detect_thresh: float = Field(1.2, gt=0, description="detection threshold, background sigma (PSF-filtered)")
    minarea: int = Field(3, ge=1, description="minimum pixels of a detection")
    sip_order: int = Field(3, ge=1, le=5, description="order of the SIP distortion polynomials")
    psf_degree: int = Field(2, ge=0, le=3, description="polynomial degree of the PSF variation")
    cosmic_rays: bool = Field(True, description="flag cosmic rays (sharper than the PSF)")
    edge_px: int = Field(4, ge=0, description="EDGE mask margin, pixels")
    min_calibrators: int = Field(30, ge=3, description="fewest photometric calibrators for STATUS=1")
    max_seeing_arcsec: float = Field(4.0, gt=0, description="worse seeing marks the image bad")
    nominal_zp: dict[str, float] = Field(default_factory=lambda: {"zg": 26.55, "zr": 26.39, "zi": 25.95},
                                         description="clear-sky zero point at airmass 0, AB mag for 1 DN in 30 s")
    extinction: dict[str, float] = Field(default_factory=lambda: {"zg": 0.18, "zr": 0.10, "zi": 0.06},
                                         description="extinction, mag per airmass")


class ApiConfig(_Section):
    """The HTTP archive API ``zsds serve`` (zsds/api)."""

    host: str = Field("127.0.0.1", description="address uvicorn listens on")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    proprietary_days: float = Field(365.0, ge=0,
                                    description="days after OBSJD until program 2/3 data are public")
    max_cone_radius_arcsec: float = Field(3600.0, gt=0, description="largest cone-search radius")
    max_forced_positions: int = Field(1500, ge=1, description="positions per forced-photometry job")
    metadata_public: bool = Field(True, description="image/candidate metadata of proprietary "
                                  "data is discoverable (pixels and photometry are withheld)")
    max_rows: int = Field(100000, ge=1, description="most rows a search returns")


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class MovingConfig(_Section):
    """Moving objects (zsds/stages/moving.py) and the alerts' known-object fields."""

    orbits_path: Path | None = Field(None, description="known-asteroid orbit file (CSV or "
                                     "Parquet, survey-inputs.md); empty: no known-object tagging")


class ZsdsConfig(_Section):
    """The validated configuration of zsds (immutable)."""

    archive: ArchiveConfig
    refcat: RefcatConfig = RefcatConfig()
    database: DatabaseConfig = DatabaseConfig()
    dask: DaskConfig = DaskConfig()
    kafka: KafkaConfig = KafkaConfig()
    processing: ProcessingConfig = ProcessingConfig()
    calibrate: CalibrateConfig = CalibrateConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    moving: MovingConfig = MovingConfig()

    @property
    def refcat_path(self) -> Path:
        """The reference catalogue path, defaulting to ``<archive.root>/refcat``."""
        return self.refcat.path or self.archive.root / "refcat"

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to SQLite at ``<archive.root>/zsds.sqlite``."""
        return self.database.url or f"sqlite:///{self.archive.root / 'zsds.sqlite'}"

    def as_yaml(self) -> str:
        """The effective configuration as YAML (what ``zsds config show`` prints)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


_PATH_KEYS = {("archive", "root"), ("refcat", "path"), ("moving", "orbits_path")}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return _resolve_paths(data, path.parent, str(path))


def _resolve_paths(data: dict, base: Path, origin: str) -> dict:
    for section, key in _PATH_KEYS:
        sect = data.get(section)
        if isinstance(sect, dict) and sect.get(key) not in (None, ""):
            value = Path(os.path.expanduser(str(sect[key])))
            sect[key] = str(value if value.is_absolute() else (base / value).resolve())
    return data


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        out.setdefault(parts[0], {})[parts[1]] = yaml.safe_load(raw) if raw != "" else None
    return _resolve_paths(out, Path.cwd(), "environment")


def _merge(base: dict, extra: dict) -> dict:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}")
    return f"invalid configuration ({origin}): " + "; ".join(lines)


def load_config(
    path: str | os.PathLike | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> ZsdsConfig:
    """Load, merge and validate the configuration.

    Parameters
    ----------
    path : path-like, optional
        A user YAML file. Default: ``$ZSDS_CONFIG`` if set, else only the packaged defaults.
    environ : dict, optional
        Environment to read ``ZSDS__SECTION__KEY`` overrides from (default ``os.environ``).
    overrides : dict, optional
        ``{section: {key: value}}`` applied last.

    Returns
    -------
    ZsdsConfig

    Raises
    ------
    ConfigError
        If a file cannot be read or parsed, or a key is unknown or has a bad value; the
        message names the key (``section.key``).
    """
    environ = dict(os.environ if environ is None else environ)
    default_file = resources.files("zsds") / "data" / "zsds.yaml"
    data = yaml.safe_load(default_file.read_text())
    data["archive"]["root"] = str(Path(data["archive"]["root"]).resolve())
    origin = "packaged defaults"
    user = path or environ.get("ZSDS_CONFIG")
    if user:
        data = _merge(data, _read_yaml(Path(user)))
        origin = str(user)
    env = _env_overrides(environ)
    if env:
        data = _merge(data, env)
        origin += " + environment"
    if overrides:
        data = _merge(data, _resolve_paths(overrides, Path.cwd(), "overrides"))
    try:
        return ZsdsConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None

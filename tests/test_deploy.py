"""The production deployment files in deploy/, exercised as far as this machine allows
(deploy/README.md lists what cannot be run here and why).

* systemd units: ``systemd-analyze verify`` with ExecStart pointed at this virtual
  environment; every ExecStart names an existing zsds command and options;
* the example production configuration validates;
* ``deploy/postgres/create-db.sql`` on the test PostgreSQL (as its superuser), twice, then
  ``zsds db upgrade`` as the owner role; the reader role can read and not write;
* ``deploy/slurm/run-night.sbatch`` submitted to the local SLURM with ``sbatch --wait`` on a
  small simulated night (scheduler job + dask-jobqueue worker job).

The Kafka topic tool is tested in test_alert_topics.py, the schema upgrades in
test_db_migrate.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from zsds.config import load_config
from zsds.pipeline.cluster import load_slurm_profile

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNITS = sorted([*(DEPLOY / "systemd").glob("*.service"), *(DEPLOY / "systemd").glob("*.timer")])
INSTALLED_ZSDS = "/opt/zsds/venv/bin/zsds"
ZSDS = Path(sys.executable).parent / "zsds"


def _require(ok: bool, what: str) -> None:
    """Skip without ``what`` on a developer machine; fail under CI (CI never skips)."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} -- required under CI (.ci/services provides it)")
    pytest.skip(what)


def _unit_values(path: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith(f"{key}=")]


# -- systemd ---------------------------------------------------------------------------------
def test_systemd_units_verify(tmp_path):
    _require(shutil.which("systemd-analyze") is not None,
             "systemd-analyze not installed (Debian package systemd)")
    assert {p.name for p in UNITS} >= {"zsds-watch.service", "zsds-serve.service",
                                       "zsds-alert-topics.service", "zsds-alert-topics.timer"}
    for unit in UNITS:
        text = unit.read_text()
        assert unit.suffix == ".timer" or INSTALLED_ZSDS in text
        (tmp_path / unit.name).write_text(text.replace(INSTALLED_ZSDS, str(ZSDS)))
    copies = sorted(str(p) for p in tmp_path.iterdir())
    proc = subprocess.run(["systemd-analyze", "verify", *copies],
                          capture_output=True, text=True, timeout=120)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "zsds" in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


@pytest.mark.parametrize("unit", [p for p in UNITS if p.suffix == ".service"], ids=lambda p: p.stem)
def test_unit_runs_an_existing_zsds_command_with_its_variables_set(unit):
    [exec_start] = _unit_values(unit, "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == INSTALLED_ZSDS
    words = []  # the sub-command: the words before the first option or argument
    for a in argv[1:]:
        if a.startswith("-") or a.startswith("${"):
            break
        words.append(a)
    help_text = subprocess.run([str(ZSDS), *words, "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert help_text.returncode == 0, f"{unit.name}: zsds {' '.join(words)}: {help_text.stderr}"
    for option in (a for a in argv if a.startswith("--")):
        assert option in help_text.stdout, f"{unit.name}: zsds {' '.join(words)} has no {option}"
    defined = {kv.split("=", 1)[0] for line in _unit_values(unit, "Environment")
               for kv in shlex.split(line)}
    used = set(re.findall(r"\$\{(\w+)\}", exec_start))
    assert used <= defined, f"{unit.name}: {used - defined} not set by Environment="
    env_file = dict(line.split("=", 1) for line in (DEPLOY / "systemd" / "zsds.env").read_text()
                    .splitlines() if line and not line.startswith("#"))
    assert used <= set(env_file) and env_file["ZSDS_CONFIG"] == "/etc/zsds/zsds.yaml"


# -- configuration ---------------------------------------------------------------------------
def test_production_configuration_is_valid():
    config = load_config(DEPLOY / "zsds.production.yaml", environ={})
    assert config.database_url.startswith("postgresql+psycopg://")
    assert config.dask.cluster == "slurm"
    assert load_slurm_profile(config.dask.slurm_profile)["adapt"]["maximum_jobs"] >= 1
    kafka = config.kafka
    assert int(kafka.topic_configs["min.insync.replicas"]) < kafka.topic_replication_factor
    # every key the file sets is a documented default key (no typo silently ignored)
    defaults = yaml.safe_load((Path(sys.modules["zsds"].__file__).parent / "data" / "zsds.yaml")
                              .read_text())
    for section, values in yaml.safe_load((DEPLOY / "zsds.production.yaml").read_text()).items():
        assert set(values) <= set(defaults[section]), section


# -- PostgreSQL ------------------------------------------------------------------------------
def _psql_as_superuser(port: int, *args: str, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p", str(port),
                           "-v", "ON_ERROR_STOP=1", *args, "-f", "-"],
                          input=sql, capture_output=True, text=True, timeout=120)


@pytest.mark.postgres
def test_create_db_then_upgrade_as_owner_and_read_as_reader():
    from dbfixtures import _pg_url

    base = sa.make_url(_pg_url())
    _require(os.geteuid() == 0 and shutil.which("runuser") is not None
             and shutil.which("psql") is not None,
             "needs root, runuser and psql to act as the PostgreSQL superuser")
    tag = uuid.uuid4().hex[:8]
    db, owner, reader = f"zsds_deploy_{tag}", f"zsds_owner_{tag}", f"zsds_reader_{tag}"
    names = ["-v", f"db={db}", "-v", f"owner={owner}", "-v", f"reader={reader}",
             "-v", "owner_password=owner-pw", "-v", "reader_password=reader-pw"]
    sql = (DEPLOY / "postgres" / "create-db.sql").read_text()
    try:
        for _ in range(2):  # idempotent
            proc = _psql_as_superuser(base.port or 5432, *names, sql=sql)
            assert proc.returncode == 0, proc.stderr
        url = base.set(username=owner, password="owner-pw", database=db, query={})
        env = {**os.environ, "ZSDS__DATABASE__URL": url.render_as_string(hide_password=False),
               "ZSDS__ARCHIVE__ROOT": "/nonexistent"}
        up = subprocess.run([str(ZSDS), "db", "upgrade"], env=env, capture_output=True, text=True,
                            timeout=300)
        assert up.returncode == 0 and "applied" in up.stderr, up.stderr
        again = subprocess.run([str(ZSDS), "db", "upgrade"], env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0 and "up to date" in again.stderr, again.stderr
        engine = sa.create_engine(base.set(username=reader, password="reader-pw", database=db,
                                           query={}))
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("select value from schema_info where "
                                            "key = 'schema_version'")).scalar() is not None
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                    conn.execute(sa.text("insert into schema_info values ('x', 'y')"))
        finally:
            engine.dispose()
    finally:
        _psql_as_superuser(base.port or 5432, sql=f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE);\n'
                           f'DROP ROLE IF EXISTS "{owner}";\nDROP ROLE IF EXISTS "{reader}";\n')


# -- SLURM -----------------------------------------------------------------------------------
@pytest.mark.slurm
def test_sbatch_script_runs_the_night_on_slurm(tiny_night_raw, tmp_path):
    _require(shutil.which("sbatch") is not None,
             "SLURM not installed: cluster/start-local-slurm.sh")
    archive = tmp_path / "archive"
    config_file = tmp_path / "zsds.yaml"
    config_file.write_text(yaml.safe_dump({
        "archive": {"root": str(archive)}, "refcat": {"path": str(tiny_night_raw / "refcat")},
        "dask": {"cluster": "slurm", "slurm_profile": "local-slurm", "n_workers": 1,
                 "dashboard_address": ":0"}}))
    env = {**os.environ, "ZSDS_CONFIG": str(config_file),
           "ZSDS_INCOMING": str(tiny_night_raw / "raw"),
           "ZSDS_VENV": sys.prefix, "ZSDS_ENV_FILE": str(tmp_path / "no-such.env"),
           "ZSDS_RUN_NIGHT_ARGS": "--quads 3"}
    # the scheduler job needs one core and little memory here (the node has 2 cores; the
    # worker job of cluster/local-slurm.yaml takes the other)
    proc = subprocess.run(["sbatch", "--wait", "--parsable", "--cpus-per-task=1", "--mem=2G",
                           "--time=00:20:00", f"--chdir={tmp_path}",
                           f"--output={tmp_path}/night-%j.out",
                           str(DEPLOY / "slurm" / "run-night.sbatch"), "20261121"],
                          env=env, capture_output=True, text=True, timeout=1200)
    logs = "".join(p.read_text() for p in tmp_path.glob("night-*.out"))
    assert proc.returncode == 0, proc.stderr + logs
    summary = re.search(r"night 20261121: (\d+) quadrants done, (\d+) bad, 0 failed", logs)
    assert summary and int(summary[1]) >= 1 and int(summary[1]) + int(summary[2]) == 3, logs
    assert "night 20261121 finished (exit 0)" in logs
    engine = sa.create_engine(f"sqlite:///{archive / 'zsds.sqlite'}")
    try:
        with engine.connect() as conn:
            statuses = conn.execute(sa.text("select status from processing where "
                                            "stage = 'calibrate'")).scalars().all()
    finally:
        engine.dispose()
    assert len(statuses) == 3 and "failed" not in statuses
    assert (archive / "reports" / "20261121" / "index.html").exists()
    assert (archive / "lightcurves" / "store.json").exists()

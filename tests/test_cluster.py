"""Tests of zsds.pipeline.cluster: SLURM profiles, LocalCluster and a real local SLURM."""

from __future__ import annotations

import re
import shutil
import time

import pytest
from dask.utils import parse_timedelta

from zsds.config import load_config
from zsds.errors import ConfigError
from zsds.pipeline.cluster import (
    LOCAL_ALLOWED_FAILURES,
    known_profiles,
    load_slurm_profile,
    make_cluster,
    open_client,
    slurm_job_script,
)

PROFILES = ["local-slurm", "production"]


@pytest.fixture(autouse=True)
def _home_in_tmp(tmp_path, monkeypatch):
    # The production log-directory is under ~; keep test side effects out of the real home.
    monkeypatch.setenv("HOME", str(tmp_path))


def _walltime_seconds(walltime: str) -> int:
    hours, minutes, seconds = (int(part) for part in walltime.split(":"))
    return 3600 * hours + 60 * minutes + seconds


def _worker_arg(args: list[str], flag: str) -> float:
    return parse_timedelta(args[args.index(flag) + 1])


def _config(tmp_path, **dask_keys):
    return load_config(overrides={"archive": {"root": str(tmp_path)}, "dask": dask_keys})


def test_shipped_profiles_are_known():
    assert set(PROFILES) <= set(known_profiles())


@pytest.mark.parametrize("name", PROFILES)
def test_job_script_has_walltime_lifetime_and_local_directory(name):
    from dask_jobqueue import SLURMCluster

    profile = load_slurm_profile(name)
    with SLURMCluster(**profile["slurm"], dashboard_address=None) as cluster:
        script = cluster.job_script()
    walltime = profile["slurm"]["walltime"]
    assert f"#SBATCH -t {walltime}" in script
    assert "--lifetime " in script and "--lifetime-stagger " in script
    local_dir = re.search(r"--local-directory (\S+)", script).group(1)
    assert local_dir in ("${TMPDIR:-/tmp}", "$TMPDIR", "/tmp")


@pytest.mark.parametrize("name", PROFILES)
def test_lifetime_plus_stagger_ends_before_walltime(name):
    profile = load_slurm_profile(name)
    args = profile["slurm"]["worker_extra_args"]
    latest_retirement = _worker_arg(args, "--lifetime") + _worker_arg(args, "--lifetime-stagger")
    assert latest_retirement < _walltime_seconds(profile["slurm"]["walltime"])


@pytest.mark.parametrize("name", PROFILES)
def test_profile_death_timeout_and_failures_are_explicit(name):
    profile = load_slurm_profile(name)
    assert profile["slurm"]["death_timeout"] >= 60
    assert profile["allowed_failures"] > 3  # above Dask's default: walltime churn is not bad data
    assert profile["adapt"]["minimum_jobs"] <= profile["adapt"]["maximum_jobs"]


def test_production_profile_is_66_nodes_of_16_cores():
    profile = load_slurm_profile("production")
    assert profile["slurm"]["cores"] == 16
    assert profile["slurm"]["processes"] == 16
    assert profile["adapt"]["maximum_jobs"] == 66


def test_slurm_job_script_uses_configured_profile(tmp_path):
    script = slurm_job_script(_config(tmp_path, slurm_profile="production"))
    assert "#SBATCH --cpus-per-task=16" in script
    assert "--nworkers 16" in script
    assert "#SBATCH -t 12:00:00" in script


def test_unknown_profile_names_it():
    with pytest.raises(ConfigError, match="no-such-profile"):
        load_slurm_profile("no-such-profile")


def test_profile_from_path_with_bad_key_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "jobqueue:\n  slurm: {cores: 2, coress: 3, memory: 1GiB, walltime: '00:10:00'}\n"
        "zsds:\n  adapt: {maximum_jobs: 1}\n"
    )
    with pytest.raises(ConfigError, match=r"bad\.yaml.*coress"):
        load_slurm_profile(path)


def test_profile_without_maximum_jobs_is_rejected(tmp_path):
    path = tmp_path / "unbounded.yaml"
    path.write_text("jobqueue:\n  slurm: {cores: 2, memory: 1GiB, walltime: '00:10:00'}\n")
    with pytest.raises(ConfigError, match="maximum_jobs"):
        load_slurm_profile(path)


@pytest.mark.parametrize(
    ("zsds_section", "key"),
    [
        ("{adapt: {minimum_jobs: 3, maximum_jobs: 1}}", "minimum_jobs exceeds"),
        ("{adapt: {maximum_jobs: -1}}", "zsds.adapt.maximum_jobs"),
        ("{adapt: {maximum_jobs: 1}, allowed_failures: many}", "zsds.allowed_failures"),
        ("{adapt: {maximum_jobs: 1}, retries: 2}", "retries"),
    ],
)
def test_invalid_zsds_settings_name_the_key(tmp_path, zsds_section, key):
    path = tmp_path / "profile.yaml"
    path.write_text(
        "jobqueue:\n  slurm: {cores: 2, memory: 1GiB, walltime: '00:10:00'}\n"
        f"zsds: {zsds_section}\n"
    )
    with pytest.raises(ConfigError, match=key):
        load_slurm_profile(path)


def test_external_scheduler_starts_nothing(tmp_path):
    cluster, address = make_cluster(_config(tmp_path, cluster="tcp://10.0.0.1:8786"))
    assert cluster is None and address == "tcp://10.0.0.1:8786"


def _square(x):
    return x * x


def test_open_client_local_cluster_runs_a_task(tmp_path):
    config = _config(tmp_path, n_workers=1, memory_limit="1GiB", dashboard_address=":0")
    with open_client(config) as client:
        assert client.submit(_square, 7).result(timeout=60) == 49
        assert len(client.scheduler_info()["workers"]) == 1
        allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        assert allowed == LOCAL_ALLOWED_FAILURES
    assert client.status == "closed"


@pytest.mark.slurm
@pytest.mark.skipif(
    shutil.which("sinfo") is None,
    reason="SLURM client tools (sinfo) not installed; run cluster/start-local-slurm.sh",
)
def test_real_slurm_job_runs_a_dask_task(tmp_path):
    def inside_slurm_job():
        # Nested, so cloudpickle ships it by value: the worker cannot import this test module.
        import os

        return 6 * 7, os.environ.get("SLURM_JOB_ID")

    config = _config(tmp_path, cluster="slurm", slurm_profile="local-slurm", dashboard_address=":0")
    started = time.monotonic()
    with open_client(config) as client:
        answer, job_id = client.submit(inside_slurm_job, pure=False).result(timeout=90)
        allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    assert answer == 42
    assert job_id and job_id.isdigit(), "the task did not run inside a SLURM job"
    assert allowed == load_slurm_profile("local-slurm")["allowed_failures"]
    assert time.monotonic() - started < 90

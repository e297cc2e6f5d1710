"""The analyst notebooks (notebooks/*.ipynb) run clean on the sample archive.

One session fixture builds the sample archive (:mod:`zsds.sim.sample`) with night 2's alerts
also sent to a throw-away Tansu broker; each notebook then runs in a fresh kernel (nbclient)
with ``ZSDS_NOTEBOOK_DATA`` pointing at it, and must draw its figures and print what it
found. The notebooks are stored without outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from zsds.sim.sample import sample_archive

from kafkabroker import TansuBroker

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

#: Per notebook: the fewest figures it draws and patterns its printed output must match.
EXPECTED = {
    "01-night-processing-and-qa.ipynb": (3, [
        r"dashboard: http://\S+/status",
        r"night 20261123: [1-9]\d* quadrants done, 0 bad, 0 failed",
        r"verdict: (green|amber|red)"]),
    "02-reference-images.ipynb": (4, [r"5 inputs, median single-epoch limit",
                                      r"PSF FWHM [\d.]+ px"]),
    "03-lightcurves.ipynb": (3, [r"selected \d+ objects; [1-9]\d* of them are true variables",
                                 r"[1-9]\d* objects within 10 arcsec"]),
    "04-alert-stream.ipynb": (4, [r"[1-9]\d* alerts of night 20261122",
                                  r"from Kafka \(127\.0\.0\.1:\d+\): [1-9]\d* alerts consumed, "
                                  r"[1-9]\d* passed the filter"]),
}


@pytest.fixture(scope="session")
def notebook_data(tmp_path_factory):
    with TansuBroker() as broker:
        yield sample_archive(tmp_path_factory.mktemp("notebook-data"),
                             bootstrap_servers=broker.bootstrap)


def test_the_four_analyst_notebooks_are_there():
    assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert book.metadata["kernelspec"]["name"] == "python3"


def _outputs(book) -> tuple[str, int]:
    text, figures = [], 0
    for cell in book.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                text.append(out.text)
            figures += "image/png" in out.get("data", {})
    return "".join(text), figures


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_clean(path, notebook_data, monkeypatch, tmp_path):
    monkeypatch.setenv("ZSDS_NOTEBOOK_DATA", str(notebook_data.workdir))
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text, figures = _outputs(book)
    min_figures, patterns = EXPECTED.get(path.name, (1, []))
    assert figures >= min_figures, f"{path.name}: {figures} figures\n{text}"
    for pattern in patterns:
        assert re.search(pattern, text), f"{path.name}: no match for {pattern!r} in\n{text}"

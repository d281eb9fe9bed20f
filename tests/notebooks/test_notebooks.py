"""Execute every notebook in notebooks/ top to bottom at small settings; any error fails the test."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_kalman_from_scratch.ipynb", "02_structural_models.ipynb", "03_online_updating.ipynb",
            "04_many_series.ipynb", "05_kalman_to_selective_ssm.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    # a kernel spec for this very interpreter, so the notebook sees the same install
    kernel_dir = tmp_path / "kernels" / "streamssm-test"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "StreamSSM test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    # the kernel inherits this environment: small settings, CPU, the project on the path
    monkeypatch.setenv("STREAMSSM_FAST", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name="streamssm-test",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()   # raises CellExecutionError, with the cell and traceback, on the first error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors

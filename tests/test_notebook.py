"""The quickstart notebook: committed without outputs, and runs top to bottom headless.

The run test executes ``notebooks/quickstart.ipynb`` with nbclient in a kernel of this Python
(a kernelspec written to a temporary folder, so no global Jupyter set-up is needed or touched),
with its ``parameters`` cell replaced: the bundled model, the quick scoring, files under tmp_path.
The kernel's caches (mesh hierarchy, IPython profile) and Jupyter's connection files also go
under tmp_path, so the test never writes the user's folders.

Strip outputs before committing an edited notebook::

    .venv/bin/python tests/test_notebook.py notebooks/quickstart.ipynb
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL_NAME = "meshrec-notebook-test"
# one cell may train the tiny model on a slow, shared CPU; the whole notebook takes about a minute
CELL_TIMEOUT_S = 240
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def strip_outputs(notebook):
    """``notebook`` (an ``nbformat.NotebookNode``) without outputs, execution counts, execution
    timings or run-specific notebook metadata; cell sources, ids and tags are kept. In place;
    returns it."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)  # nbclient's timings
    kernelspec = notebook.metadata.get("kernelspec")
    notebook.metadata = nbformat.from_dict({"language_info": {"name": "python"}})
    if kernelspec is not None:
        notebook.metadata["kernelspec"] = kernelspec
    return notebook


def strip_file(path: Path) -> bool:
    """Strip the notebook at ``path`` in place; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    notebook = strip_outputs(nbformat.reads(text, as_version=4))
    stripped = nbformat.writes(notebook) + "\n"
    if stripped == text:
        return False
    path.write_text(stripped, encoding="utf-8")
    return True


def parameters_cell(notebook):
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise AssertionError(f"expected one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def test_committed_notebook_is_stripped_and_valid():
    text = NOTEBOOK.read_text(encoding="utf-8")
    notebook = nbformat.reads(text, as_version=4)
    nbformat.validate(notebook)
    with_outputs = [
        index for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]  # fmt: skip
    assert not with_outputs, (
        f"cells {with_outputs} of {NOTEBOOK.name} hold outputs; run: .venv/bin/python tests/test_notebook.py {NOTEBOOK}"
    )
    assert nbformat.writes(strip_outputs(nbformat.reads(text, as_version=4))) + "\n" == text, (
        f"{NOTEBOOK.name} holds execution metadata; run: .venv/bin/python tests/test_notebook.py {NOTEBOOK}"
    )
    source = parameters_cell(notebook).source
    for name in ("CHECKPOINT = None", "TRAIN = False", "QUICK = True", "OUT = ", "DEMO = "):
        assert name in source


def test_strip_outputs_removes_what_a_run_adds():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)", metadata={"tags": ["x"]})])
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    notebook.cells[0].execution_count = 3
    notebook.cells[0].metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00"}
    notebook.metadata["language_info"] = {"name": "python", "version": "3.11.2"}
    strip_outputs(notebook)
    cell = notebook.cells[0]
    assert cell.outputs == [] and cell.execution_count is None and cell.metadata == {"tags": ["x"]}
    assert notebook.metadata == {"language_info": {"name": "python"}}


def write_kernelspec(folder: Path, env: dict[str, str]) -> None:
    """A kernelspec that starts ipykernel in this very Python (the project's venv)."""
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "meshrec (test)",
        "language": "python",
        "env": env,
    }))  # fmt: skip


def outputs_of(notebook) -> list:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


@pytest.mark.slow
def test_notebook_runs_headless(tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    if importlib.util.find_spec("ipykernel") is None:  # the kernel's package; no need to import it here
        pytest.skip("ipykernel is not installed")
    from meshrec.render import gl_available

    if not gl_available():
        pytest.skip("OpenGL (EGL) renderer unavailable: the notebook renders synthetic test images")
    from nbclient import NotebookClient

    jupyter = tmp_path / "jupyter"
    write_kernelspec(jupyter, {
        "MESHREC_CACHE_DIR": str(tmp_path / "cache"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # what Jupyter uses; never a GUI window
    })  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))  # searched first: our kernelspec, no global install
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # nbclient creates ~/.ipython otherwise

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    out = tmp_path / "out"
    parameters_cell(notebook).source = f"CHECKPOINT = None\nTRAIN = False\nQUICK = True\nOUT = {str(out)!r}\nDEMO = None\n"
    client = NotebookClient(
        notebook, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # Jupyter starts in the notebook's folder
    )  # fmt: skip
    client.execute()  # raises CellExecutionError, naming the cell, on any error

    outputs = outputs_of(notebook)
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 1, "no matplotlib figure shown"
    assert sum(PLOTLY_MIME in output.get("data", {}) for output in outputs) == 2, "expected two plotly figures"
    assert "faces identical: True" in text
    assert "mean_hand" in text and "final" in text, "no score table printed"
    meshes = sorted(p.name for p in (out / "meshes").iterdir())
    assert len(meshes) == 8 and any("left" in name for name in meshes) and any("right" in name for name in meshes)
    assert "model: bundled synthetic-hands" in text and not (out / "train_quick").exists()  # TRAIN = False
    # section 8: DEMO = None, so a few 2D-only steps here on photo-style hands, scored before and after
    assert "fine-tuned 4 steps on 2D keypoints only" in text and (out / "finetune_joints2d" / "checkpoints" / "last.ckpt").exists()
    assert "bundled: PA-MPVPE" in text and "2D-only fine-tuned: PA-MPVPE" in text
    assert (tmp_path / "cache").is_dir(), "the kernel did not use the test's cache folder"


if __name__ == "__main__":
    for argument in sys.argv[1:] or [str(NOTEBOOK)]:
        print(f"{argument}: {'stripped' if strip_file(Path(argument)) else 'already clean'}")

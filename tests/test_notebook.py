"""The Colab debugging notebook runs top to bottom, headless, on the test data."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow      # a kernel that compiles and trains the notebook's model
def test_debugging_notebook_runs_top_to_bottom(data_dir, monkeypatch):
  monkeypatch.setenv("MMPRETRAIN_DATA_DIR", data_dir)     # the kernel inherits it
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", "debug.ipynb"), as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 4      # batch + mask, sampled image, rollout, routing
  text = "".join(o.get("text", "") for o in outputs)
  assert "parameters" in text and "14 {" in text      # the overview and the last step

"""notebooks/quickstart.ipynb, executed top to bottom with nbclient (a tiny model instead of SmolLM2, 6 steps)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o["text"])
        elif "data" in o and "text/plain" in o["data"]:
            out.append(o["data"]["text/plain"])
    return "".join(out)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_notebook_runs_top_to_bottom(tiny_files, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_NOTEBOOK_MODEL", str(tiny_files / "model"))
    monkeypatch.setenv("KUBETUNE_NOTEBOOK_STEPS", "6")
    monkeypatch.setenv("KUBETUNE_NOTEBOOK_LR_MULTIPLIER", "50")
    monkeypatch.setenv("KUBETUNE_NOTEBOOK_MAX_NEW_TOKENS", "6")
    monkeypatch.setenv("KUBETUNE_NOTEBOOK_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    try:
        NotebookClient(nb, timeout=540, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # to look at when this fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = "\n".join(_text(c) for c in code)
    assert f"base model: {tiny_files / 'model'}" in text and "steps: 6" in text
    assert re.search(r"file-[0-9a-f]{24} processed \d+ bytes", text)
    assert re.search(r"ftjob-[0-9a-f]{24} queued", text)
    # Events followed while it ran, then the result.
    assert "Fine-tuning job started" in text and "Phase Running" in text and re.search(r"Step \d/6: training loss=", text)
    assert "status: succeeded" in text
    adapter = Path(re.search(r"fine_tuned_model: (\S+)", text).group(1))
    assert (adapter / "adapter_config.json").exists() and adapter.is_relative_to(tmp_path)
    assert re.search(r"trained_tokens: [1-9]\d*", text)
    steps = [int(s) for s in re.findall(r"step +(\d+): train loss [0-9.]+, valid loss ", text)]
    assert steps and steps == sorted(steps, reverse=True) and steps[0] <= 6, text
    # Base and tuned answers for the three held-out tickets.
    assert text.count("\nbase:") + text.startswith("base:") == 3 and text.count("\ntuned:") == 3
    # The loss curve: a PNG shown, and the validation loss went down.
    assert any("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert (tmp_path / "loss.png").stat().st_size > 1000
    first, last = (float(x) for x in re.search(r"validation loss: ([0-9.]+) at step 0 -> ([0-9.]+) at step 6", text).groups())
    assert last < first
    assert "kubetune api stopped" in text

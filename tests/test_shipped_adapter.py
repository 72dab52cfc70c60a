"""The adapter shipped in the package (issue 3): small, loads over the bundled model, and reads keys through its
memories. Its full evaluation is in its model card; this guards the shipped files and the code that loads them."""

import pytest
import torch

from cometlm import CometForCausalLM
from cometlm.bundled import SHIPPED_ADAPTER
from cometlm.evaluation.passkey import evaluate_passkey


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(2)
    return CometForCausalLM.from_pretrained(SHIPPED_ADAPTER).eval()


def test_shipped_adapter_is_small_and_documented(shipped):
    size = sum(f.stat().st_size for f in SHIPPED_ADAPTER.iterdir())
    assert size <= 20 * 2**20, f"the shipped adapter is {size / 2**20:.1f} MiB"
    assert (SHIPPED_ADAPTER / "README.md").is_file()
    assert shipped.base_model == "smollm2-135m-instruct"
    assert any("lora_" in name for name, _ in shipped.backbone_model.named_parameters())


def test_shipped_adapter_reads_keys_through_its_memories(shipped, tmp_path):
    """Keys at the very start of 1k-token prompts, eight chunks before the question: found with the memories (the
    grid in the model card found 3 of 3 in this cell), never with them off."""
    grid = dict(lengths=[1024], depths=[0], trials=3, seed=0, progress=False)
    comet = evaluate_passkey(shipped, shipped.tokenizer, out_dir=tmp_path / "comet", **grid)
    off = evaluate_passkey(shipped, shipped.tokenizer, out_dir=tmp_path / "off", method="no-memory", **grid)
    assert comet["mean_accuracy"] >= 2 / 3
    assert off["mean_accuracy"] == 0.0


def test_shipped_adapters_load_by_name(shipped):
    by_name = CometForCausalLM.from_pretrained("smollm2-135m-passkey")
    assert by_name.config == shipped.config
    for (name, a), (_, b) in zip(by_name.state_dict().items(), shipped.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_directory_is_never_taken_for_a_shipped_adapter(tmp_path, monkeypatch):
    """A folder in the way, named like a shipped adapter, is read as the folder (and refused here), not replaced."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-passkey").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a saved CoMeT model"):
        CometForCausalLM.from_pretrained("smollm2-135m-passkey")
    with pytest.raises(FileNotFoundError, match="neither a directory nor .* shipped .*smollm2-135m-passkey"):
        CometForCausalLM.from_pretrained("smollm2-135m-passky")

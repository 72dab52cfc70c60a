"""The adapter shipped in the package (issue 3): small, loads over the bundled model, and reads keys through its
memories. Its full evaluation is in its model card; this guards the shipped files and the code that loads them."""

import pytest
import torch

from cometlm import CometForCausalLM
from cometlm.bundled import SHIPPED_ADAPTER, shipped_adapters
from cometlm.evaluation.passkey import evaluate_passkey


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(2)
    return CometForCausalLM.from_pretrained(SHIPPED_ADAPTER).eval()


# The ablations trained with the adapter's recipe (issue 5) ship next to it as smollm2-135m-passkey-VARIANT: the
# settings each may change, and what must hold of it.
ABLATIONS = {
    "global-only": ({"temp_stride", "temp_capacity"}, lambda c: c.temp_capacity == 0 and c.global_slots > 0),
    "temp-only": ({"global_slots", "gate_bias"}, lambda c: c.global_slots == 0 and c.temp_capacity > 0),
    "no-gate": ({"gate", "gate_bias"}, lambda c: not c.gate and c.global_slots > 0 and c.temp_capacity > 0),
}


@pytest.mark.parametrize("name", sorted(shipped_adapters()))
def test_every_shipped_adapter_is_small_documented_and_what_its_name_says(name, shipped):
    folder = shipped_adapters()[name]
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size <= 20 * 2**20, f"{name} is {size / 2**20:.1f} MiB"
    assert (folder / "README.md").is_file()
    model = shipped if folder == SHIPPED_ADAPTER else CometForCausalLM.from_pretrained(name)
    assert model.base_model == "smollm2-135m-instruct"
    assert any("lora_" in n for n, _ in model.backbone_model.named_parameters())
    if folder != SHIPPED_ADAPTER:
        variant = name.removeprefix(SHIPPED_ADAPTER.name + "-")
        assert variant in ABLATIONS, f"{name}: not the shipped adapter nor one of its ablations {sorted(ABLATIONS)}"
        may_differ, holds = ABLATIONS[variant]
        mine, main = model.comet_config.to_dict(), shipped.comet_config.to_dict()
        assert {k for k in main if mine[k] != main[k]} <= may_differ and holds(model.comet_config)
        assert (folder / "loss.png").is_file()


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

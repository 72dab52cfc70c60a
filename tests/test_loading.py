"""Loading a model by name: the one public function the command line, trainer, evaluations and servers call."""

import pytest
import torch

from cometlm.config import CometConfig
from cometlm.loading import ModelOptions, load_model
from conftest import SMALL


def test_options_are_checked_before_anything_loads():
    with pytest.raises(ValueError, match="dtype must be one of"):
        ModelOptions(dtype="float16")
    with pytest.raises(ValueError, match="threads must be a positive int"):
        ModelOptions(threads=0)
    with pytest.raises(TypeError, match="config must be a CometConfig"):
        ModelOptions(config={"chunk_size": 8})
    assert ModelOptions(adapter="my-run/final").name == "my-run/final"
    assert ModelOptions(base="some/dir").name == "some/dir"


def test_an_untrained_model_a_saved_adapter_and_dtype_load_as_named(tiny_model_dir, tmp_path):
    model = load_model(ModelOptions(base=tiny_model_dir, config=SMALL))
    assert model.comet_config == SMALL and not model.training and model.tokenizer is not None
    model.save_pretrained(tmp_path / "adapter", adapter=True)
    again = load_model(ModelOptions(adapter=str(tmp_path / "adapter"), config=CometConfig(chunk_size=16)))
    assert again.comet_config == SMALL  # an adapter's own config wins over `config`
    ids = torch.arange(1, 30)[None]
    with torch.inference_mode():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
    half = load_model(ModelOptions(base=tiny_model_dir, config=SMALL, dtype="bfloat16"))
    assert half.backbone.dtype == torch.bfloat16

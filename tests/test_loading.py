"""Loading a model by name: the one public function the command line, trainer, evaluations and servers call."""

import pytest
import torch

from cometlm.config import CometConfig
from cometlm.hardware import cpu_flags, cpu_flags_say_bfloat16
from cometlm.loading import ModelOptions, load_model, resolve_dtype
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


XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\nmodel name\t: Xeon\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
OLD_X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\nmodel name\t: bf16 in a name is not a flag\n"


def test_native_bfloat16_is_read_from_the_flags_lines_of_cpuinfo():
    assert cpu_flags_say_bfloat16(XEON) and cpu_flags_say_bfloat16(ARM)
    assert not cpu_flags_say_bfloat16(OLD_X86) and not cpu_flags_say_bfloat16("")
    assert "amx_bf16" in cpu_flags(XEON) and "bf16" not in cpu_flags(OLD_X86) and cpu_flags("") == frozenset()


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bfloat16_exactly_where_the_hardware_computes_it(tiny_model_dir, monkeypatch, native):
    import cometlm.loading as loading

    monkeypatch.setattr(loading, "native_bfloat16", lambda device="cpu": native)
    want = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto") == str(want).removeprefix("torch.")
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    model = load_model(ModelOptions(base=tiny_model_dir, config=SMALL, dtype="auto"))
    assert model.backbone.dtype == want
    assert all(p.dtype == torch.float32 for p in model.memory.parameters())  # the gate and the blend stay float32


def test_the_reading_commands_default_to_auto_and_training_to_float32():
    from cometlm.cli import build_parser

    parser = build_parser()
    for argv in (["generate", "--prompt", "hi"], ["demo"], ["serve"], ["eval", "passkey"]):
        assert parser.parse_args(argv).dtype == "auto", argv
    assert parser.parse_args(["train", "--data", "passkey", "--output-dir", "x"]).dtype == "float32"

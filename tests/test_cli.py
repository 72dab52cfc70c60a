"""The command line: instant help, and a real generation with the bundled model through every option group."""

import subprocess
import sys

import pytest

from cometlm.cli import build_parser, main


def _subparsers(parser):
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {inner}", p) for inner, p in _subparsers(sub))


def test_help_is_fast_and_explains_every_option():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cometlm", "generate", "--help"],
                            capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "cometlm" in imported and "torch" not in imported and "transformers" not in imported
    commands = dict(_subparsers(build_parser()))
    assert {"generate", "demo", "train", "eval passkey"} <= commands.keys()
    for name, parser in commands.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"cometlm {name} {action.option_strings} has no help text"


def test_demo_finds_a_passkey_with_the_shipped_adapter(monkeypatch, tmp_path, capsys, tiny_model_dir):
    """The demo's passkey path end to end on a tiny random model standing in for the shipped adapter (it cannot
    find the key; the demo says so)."""
    import cometlm.bundled
    from cometlm import CometConfig, CometForCausalLM

    adapter = tmp_path / "adapter"
    config = CometConfig(chunk_size=64, global_slots=2, temp_capacity=8, attention_sink=True)
    CometForCausalLM.from_backbone(tiny_model_dir, config).save_pretrained(adapter, adapter=True)
    monkeypatch.setattr(cometlm.bundled, "SHIPPED_ADAPTER", adapter)
    assert main(["demo", "--task", "passkey", "--model", tiny_model_dir, "--tokens", "300", "--depth", "10"]) == 0
    out, err = capsys.readouterr()
    assert "truth" in out and ("correct" in out or "WRONG" in out)
    assert "300-token passkey prompt" in err and "tokens/s" in err and "peak RSS" in err


@pytest.mark.parametrize("task", ["user-qa", "babilong-qa1"])
def test_demo_answers_a_task_suites_prompt_and_scores_it(monkeypatch, tmp_path, capsys, tiny_model_dir, task):
    """Any task suite through the demo on a tiny random model (it cannot answer; the demo scores what it says and
    says that the shipped adapter is a passkey specialist)."""
    import cometlm.bundled
    from cometlm import CometConfig, CometForCausalLM
    from cometlm.tasks.suite import SPECS

    adapter = tmp_path / "adapter"
    config = CometConfig(chunk_size=64, global_slots=2, temp_capacity=8, attention_sink=True)
    CometForCausalLM.from_backbone(tiny_model_dir, config).save_pretrained(adapter, adapter=True)
    monkeypatch.setattr(cometlm.bundled, "SHIPPED_ADAPTER", adapter)
    assert main(["demo", "--task", task, "--model", tiny_model_dir, "--tokens", "400", "--depth", "30"]) == 0
    out, err = capsys.readouterr()
    assert "expected" in out and ("correct" in out or "WRONG" in out)
    assert f"400-token {task} prompt" in err and "at 30% depth" in err and "tokens/s" in err
    assert "passkey specialist" in err
    # the answer is scored as the evaluation scores it: the same prompt, the expected values printed
    from transformers import AutoTokenizer
    import random

    sample = SPECS[task].build(AutoTokenizer.from_pretrained(tiny_model_dir), 400, 0.3, random.Random(0),
                               split="test", **SPECS[task].defaults())
    assert f"expected  {', '.join(sample.answers)}  ->" in out
    with pytest.raises(SystemExit, match="0 to 100"):
        main(["demo", "--task", task, "--model", tiny_model_dir, "--depth", "130"])


def test_demo_without_the_shipped_adapter_says_what_to_do(monkeypatch, tmp_path, capsys):
    import cometlm.bundled

    monkeypatch.setattr(cometlm.bundled, "SHIPPED_ADAPTER", tmp_path / "missing")
    with pytest.raises(SystemExit, match="shipped passkey adapter is missing"):
        main(["demo", "--task", "passkey"])


def test_generate_with_the_bundled_model_saves_a_reusable_memory(tmp_path, capsys):
    memory = tmp_path / "memory.safetensors"
    small = ["--chunk-size", "32", "--global-slots", "4", "--temp-capacity", "16", "--max-new-tokens", "5"]
    prompt = "The capital of France is Paris. " * 12 + "The capital of France is"
    assert main(["generate", "--prompt", prompt, "--memory-out", str(memory), *small]) == 0
    err = capsys.readouterr().err
    assert "tokens/s" in err and "peak RSS" in err and memory.is_file()
    assert main(["generate", "--prompt", " And Italy's is", "--memory-in", str(memory), *small]) == 0


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main(["generate", "--prompt", "hi", "--chunk-size", "12", "--temp-stride", "8"]) == 2
    assert "chunk_size must be a multiple of temp_stride" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"broken")
    assert main(["generate", "--prompt", "hi", "--memory-in", str(tmp_path / "bad.safetensors")]) == 2
    assert "not a readable CoMeT memory state" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate"])

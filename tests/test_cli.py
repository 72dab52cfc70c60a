"""The command line: instant help, and a real generation with the bundled model through every option group."""

import subprocess
import sys

import pytest

from cometlm.cli import build_parser, main


def test_help_is_fast_and_explains_every_option():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cometlm.cli", "generate", "--help"],
                            capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "cometlm" in imported and "torch" not in imported and "transformers" not in imported
    for action in build_parser()._subparsers._group_actions[0].choices["generate"]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"


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

"""The command line: instant help, and a real generation with the bundled model through every option group."""

import subprocess
import sys

import pytest
import torch

from cometlm import CometForCausalLM
from cometlm.cli import build_parser, main
from conftest import SMALL, tiny_comet


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
    from cometlm.cli import demo
    from cometlm.cli.options import load_model

    adapter = tmp_path / "adapter"
    config = CometConfig(chunk_size=64, global_slots=2, temp_capacity=8, attention_sink=True)
    CometForCausalLM.from_backbone(tiny_model_dir, config).save_pretrained(adapter, adapter=True)
    monkeypatch.setattr(cometlm.bundled, "SHIPPED_ADAPTER", adapter)
    loaded = []
    monkeypatch.setattr(demo, "load_model", lambda args: loaded.append(args.comet) or load_model(args))
    assert main(["demo", "--task", "passkey", "--tokens", "300", "--depth", "10"]) == 0  # the adapter's own base
    out, err = capsys.readouterr()
    assert "truth" in out and ("correct" in out or "WRONG" in out)
    assert "300-token passkey prompt" in err and "tokens/s" in err and "peak RSS" in err
    # --model without --comet runs an untrained memory on that model, as generate does (not the adapter on it)
    assert main(["demo", "--task", "passkey", "--model", tiny_model_dir, "--tokens", "300", "--chunk-size", "64"]) == 0
    assert loaded == [str(adapter), None]


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
    monkeypatch.setattr(cometlm.bundled, "DEFAULT_ADAPTER", adapter)
    assert main(["demo", "--task", task, "--tokens", "400", "--depth", "30"]) == 0
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
    with pytest.raises(SystemExit, match="shipped adapter is missing"):
        main(["demo", "--task", "passkey"])


def _tiny_adapter(path, model_dir):
    from cometlm import CometConfig, CometForCausalLM

    config = CometConfig(chunk_size=32, global_slots=2, temp_capacity=8, attention_sink=True)
    CometForCausalLM.from_backbone(model_dir, config).save_pretrained(path, adapter=True)
    return path


@pytest.mark.parametrize("argv, comet", [
    ([], "DEFAULT"),
    (["--model", "smollm2-135m-instruct"], None),
    (["--chunk-size", "64"], None),
    (["--attention-sink"], None),
    (["--gate-bias", "0", "6"], None),
    (["--comet", "some-adapter"], "some-adapter"),
])
def test_the_default_adapter_is_taken_only_when_no_model_is_named(argv, comet):
    import cometlm.bundled
    from cometlm.cli.options import use_default_adapter

    args = build_parser().parse_args(["generate", "--prompt", "hi", *argv])
    assert use_default_adapter(args) == (comet == "DEFAULT")
    assert args.comet == (str(cometlm.bundled.DEFAULT_ADAPTER) if comet == "DEFAULT" else comet)


def test_sizes_with_an_adapter_are_refused_before_anything_loads(capsys):
    from cometlm.cli.options import model_options

    args = build_parser().parse_args(["generate", "--prompt", "hi", "--comet", "x", "--chunk-size", "64", "--no-gate"])
    with pytest.raises(SystemExit, match="--comet x brings its own sizes; drop --chunk-size, --no-gate"):
        model_options(args)
    with pytest.raises(SystemExit, match="drop --temp-stride"):
        main(["serve", "--comet", "smollm2-135m-passkey", "--temp-stride", "4", "--state-dir", "/nonexistent/x"])


def test_untrained_sizes_fill_in_the_config_defaults():
    from cometlm.cli.options import model_options
    from cometlm.config import CometConfig

    def parse(*argv):
        return model_options(build_parser().parse_args(["generate", "--prompt", "x", *argv])).config

    assert parse() == CometConfig()
    assert parse("--chunk-size", "64", "--temp-stride", "0") == CometConfig(chunk_size=64, temp_stride=0,
                                                                            temp_capacity=0)
    assert parse("--global-slots", "16", "--gate-bias", "0", "6", "--attention-sink") == CometConfig(
        global_slots=16, gate_bias=(0.0, 6.0), attention_sink=True)
    assert parse("--no-gate").gate is False


def test_generate_without_a_model_loads_the_default_adapter(monkeypatch, tmp_path, capsys, tiny_model_dir):
    """No --model, --comet or size: generate runs the default adapter (a tiny one recording its tiny base stands in
    for it), not an untrained memory; with --model it runs an untrained one."""
    import cometlm.bundled

    adapter = _tiny_adapter(tmp_path / "default-adapter", tiny_model_dir)
    monkeypatch.setattr(cometlm.bundled, "DEFAULT_ADAPTER", adapter)
    memory = tmp_path / "memory.safetensors"
    prompt = "one two three four five six seven eight nine ten " * 8
    assert main(["generate", "--prompt", prompt, "--max-new-tokens", "3", "--memory-out", str(memory)]) == 0
    assert "CoMeT adapter: default-adapter (the default" in capsys.readouterr().err
    from cometlm.state import MemoryState

    assert MemoryState.load(memory).config.global_slots == 2  # the adapter's M, not the untrained 64
    assert main(["generate", "--prompt", "hi", "--model", tiny_model_dir, "--max-new-tokens", "2",
                 "--memory-out", str(memory)]) == 0
    assert "(the default" not in capsys.readouterr().err
    assert MemoryState.load(memory).config.global_slots == 64


def test_generate_with_the_bundled_model_saves_a_reusable_memory(tmp_path, capsys):
    memory = tmp_path / "memory.safetensors"
    small = ["--chunk-size", "32", "--global-slots", "4", "--temp-capacity", "16", "--max-new-tokens", "5"]
    prompt = "The capital of France is Paris. " * 12 + "The capital of France is"
    assert main(["generate", "--prompt", prompt, "--memory-out", str(memory), *small]) == 0
    err = capsys.readouterr().err
    assert "tokens/s" in err and "peak RSS" in err and memory.is_file()
    assert main(["generate", "--prompt", " And Italy's is", "--memory-in", str(memory), *small]) == 0


def test_generate_refuses_a_memory_another_model_wrote(tmp_path, capsys, tiny_model_dir):
    """A state read by other weights of the same sizes loaded and answered from memories that mean nothing to this
    model; `--memory-out` now records the model's fingerprint, as the server does, and `--memory-in` checks it."""
    import shutil

    from transformers import LlamaForCausalLM

    from cometlm.state import MemoryState

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaForCausalLM.config_class.from_pretrained(other)).save_pretrained(other)
    memory, again = tmp_path / "memory.safetensors", tmp_path / "again.safetensors"
    small = ["--chunk-size", "16", "--global-slots", "2", "--temp-capacity", "4", "--max-new-tokens", "2"]
    prompt = "one two three four five six seven eight nine ten " * 4
    assert main(["generate", "--model", tiny_model_dir, "--prompt", prompt, "--memory-out", str(memory), *small]) == 0
    assert MemoryState.read_notes(memory)["model"]
    capsys.readouterr()
    assert main(["generate", "--model", str(other), "--prompt", "hi", "--memory-in", str(memory),
                 "--memory-out", str(again), *small]) == 2
    assert "was written by another model" in capsys.readouterr().err and not again.exists()
    assert main(["generate", "--model", tiny_model_dir, "--prompt", "hi", "--memory-in", str(memory),
                 "--memory-out", str(again), *small]) == 0  # the model that wrote it continues it
    assert MemoryState.read_notes(again) == MemoryState.read_notes(memory)


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main(["generate", "--prompt", "hi", "--chunk-size", "12", "--temp-stride", "8"]) == 2
    assert "chunk_size must be a multiple of temp_stride" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"broken")
    assert main(["generate", "--prompt", "hi", "--memory-in", str(tmp_path / "bad.safetensors")]) == 2
    assert "not a readable CoMeT memory state" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate"])


def test_bad_input_fails_before_the_model_loads_and_writes_nothing(monkeypatch, tmp_path, capsys, tiny_model_dir):
    """A bad generation number, an unreadable prompt file or memory path, or a file where a folder belongs: one
    line, no traceback, before the model loads (a slow step on a real model), and no folder or file left."""
    import cometlm.cli.generate as generate
    from cometlm.training import loop

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(generate, "load_model", no_load)
    for option, value, said in (("--max-new-tokens", "-1", "at least 0"), ("--temperature", "0", "above 0"),
                                ("--top-p", "1.5", "at most 1"), ("--repetition-penalty", "nan", "above 0"),
                                ("--top-k", "two", "an integer")):
        with pytest.raises(SystemExit) as exit:
            main(["generate", "--prompt", "hi", option, value])
        assert exit.value.code == 2 and said in capsys.readouterr().err
    assert main(["generate", "--prompt-file", str(tmp_path)]) == 2  # a folder
    assert "Is a directory" in capsys.readouterr().err
    for out in (tmp_path, tmp_path / "missing" / "memory.safetensors"):
        with pytest.raises(SystemExit, match="give a file in an existing folder"):
            main(["generate", "--prompt", "hi", "--memory-out", str(out)])
    assert sorted(tmp_path.iterdir()) == []

    import cometlm.cli.train as train_command

    monkeypatch.setattr(train_command, "load_model", no_load)
    for spec, said in (("passkey@most", "must be a number"), ("passkeys", "is not a data source"),
                       ("text:/no/such.txt", "no such file"), ("jsonl-chat:/no/such.jsonl", "no such file"),
                       ("passkey:digits=0", "1 <= LOW <= HIGH"), ("ruler-niah-single:needles=3", "options are"),
                       ("babilong-qa1:split=tests", "split must be one of"),
                       ("ruler-niah-single:haystack=file:/no/such.txt", "no such file"),
                       ("user-qa:depth=0-120", "0 <= LOW <= HIGH <= 100")):
        assert main(["train", "--data", "lm:bible", spec, "--output-dir", str(tmp_path / "run")]) != 0, spec
        assert said in capsys.readouterr().err, spec
    assert sorted(tmp_path.iterdir()) == []

    taken = tmp_path / "taken"
    taken.write_text("a file")
    monkeypatch.setattr(loop, "prepare_model", no_load)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        loop.train(tiny_comet(), [1], loop.TrainConfig(output_dir=str(taken)))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="cannot put LoRA on"):  # a refused run makes no output folder
        loop.train(CometForCausalLM.from_backbone(tiny_model_dir, SMALL), [1],
                   loop.TrainConfig(output_dir=str(tmp_path / "new"), lora_targets=("q_prj",)))
    assert not (tmp_path / "new").exists()


def test_serve_checks_its_keys_folder_and_address_before_the_model_loads(monkeypatch, tmp_path, capsys):
    import socket

    import cometlm.cli.serve as serve_command

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the server's settings were checked")

    monkeypatch.setattr(serve_command, "load_model", no_load)
    bad_keys = tmp_path / "keys.txt"
    bad_keys.write_text("alice secret\n")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for argv, said in ((["--api-keys", str(tmp_path / "none.txt")], "no API keys file"),
                           (["--api-keys", str(bad_keys)], "expected 'name:sha256'"),
                           (["--state-dir", str(a_file)], "is a file, not a folder"),
                           (["--port", port], f"cannot listen on 127.0.0.1:{port}")):
            assert main(["serve", "--state-dir", str(tmp_path / "sessions"), *argv]) != 0, argv
            assert said in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        main(["serve", "--port", "70000"])
    assert "at most 65535" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "keys.txt"]


def test_evaluation_options_are_checked_before_the_model_loads(monkeypatch, capsys):
    import cometlm.cli.eval as eval_command

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(eval_command, "load_model", no_load)
    for argv, said in ((["--method", "comet", "--window", "100"], "--window applies to the methods full"),
                       (["--method", "truncated", "--sink-tokens", "2"], "--sink-tokens applies to the method sliding"),
                       (["--method", "full", "--prime-tokens", "9"], "--prime-tokens applies to the methods comet")):
        assert main(["eval", "passkey", "--lengths", "1024", *argv]) == 2
        assert said in capsys.readouterr().err
    assert main(["eval", "ruler-niah-single", "--lengths", "1024", "--haystack", "file:/no/such.txt"]) != 0
    assert "no such file '/no/such.txt'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "ppl", "--method", "sliding-window", "--window", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_ctrl_c_ends_a_command_with_one_line(monkeypatch, capsys):
    import cometlm.cli.generate as generate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "load_model", interrupted)
    assert main(["generate", "--prompt", "hi"]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")


def test_sigterm_ends_an_evaluation_as_ctrl_c_does(monkeypatch):
    """SIGTERM (a scheduler's stop) killed `eval` outright: its summary missed the trials it had recorded. It now ends
    the command as Ctrl-C does, so every `finally` that brings a result's files up to date runs."""
    import os
    import signal
    import time

    import cometlm.cli.eval as eval_command

    brought_up_to_date = []

    def long_evaluation(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        finally:
            brought_up_to_date.append(True)

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(eval_command, "cmd_eval_table", long_evaluation)
    assert main(["eval", "table", "anything"]) == 130 and brought_up_to_date
    assert signal.getsignal(signal.SIGTERM) == previous

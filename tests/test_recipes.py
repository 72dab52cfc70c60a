"""The training recipe script: every phase of every variant is a valid `cometlm train` command, chained."""

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cometlm.config import CometConfig
from cometlm.cli.options import model_options
from cometlm.cli.train import config_from_args, register
from cometlm.evaluation.settings import READ_BLOCK
from conftest import shipped_key_budget

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "passkey-smollm2.sh"


def phases(out, *args):
    """The `cometlm train` argument lists the recipe would run (with `echo` standing in for cometlm)."""
    result = subprocess.run(["bash", str(RECIPE), str(out), *args], capture_output=True, text=True,
                            env={**os.environ, "COMETLM": "echo"})
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("train ")]


def parse(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.mark.parametrize("variant, switches", [
    ("comet", dict(global_slots=16, temp_stride=8, temp_capacity=16, gate=True, gate_bias=(0.0, 6.0))),
    ("global-only", dict(global_slots=16, temp_stride=0, temp_capacity=0, gate=True, gate_bias=(0.0, 6.0))),
    ("temp-only", dict(global_slots=0, temp_stride=8, temp_capacity=16, gate_bias=None)),
    ("no-gate", dict(global_slots=16, temp_stride=8, temp_capacity=16, gate=False, gate_bias=None)),
])
def test_every_phase_parses_and_continues_from_the_last(tmp_path, variant, switches):
    runs = [parse(argv) for argv in phases(tmp_path, variant, "--", "--threads", "2")]
    assert len(runs) == 7 and all(args.threads == 2 for args in runs)
    first = runs[0]
    assert first.comet is None
    model = model_options(first).config  # what `cometlm train` builds; a later phase's --comet brings its own
    assert all(model_options(args).adapter == args.comet for args in runs[1:])  # and none repeats the sizes
    assert model.chunk_size == 128 and model.attention_sink
    for name, value in switches.items():
        assert getattr(model, name) == value, name
    for before, after in zip(runs, runs[1:]):
        assert after.comet == str(Path(before.output_dir) / "final")
    configs = [config_from_args(args) for args in runs]
    assert [c.last_step for c in configs] == [181, 300, 500, 200, 160, 800, 1000]  # 3,141 steps in all
    # the shipped adapter's phases v1-v2b were trained before the target had the period after the key
    passkey = [[spec for spec in args.data if spec.startswith("passkey")] for args in runs]
    assert passkey[:4] == [["passkey:period=0@0.85"]] * 3 + [["passkey@0.85"]]


def test_finished_phases_are_skipped_and_bad_variants_refused(tmp_path):
    (tmp_path / "passkey-v1" / "final").mkdir(parents=True)
    (tmp_path / "passkey-v1" / "final" / "comet_config.json").write_text("{}")
    assert len(phases(tmp_path)) == 6
    assert [argv[-2:] for argv in phases(tmp_path, "--", "--threads", "1")] == [["--threads", "1"]] * 6
    result = subprocess.run(["bash", str(RECIPE), str(tmp_path), "gateless"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown variant 'gateless'" in result.stderr
    result = subprocess.run(["bash", str(RECIPE), str(tmp_path), "no-gate"], capture_output=True, text=True)
    assert result.returncode == 2 and "holds the 'comet' variant, not 'no-gate'" in result.stderr


COMPARE = RECIPE.with_name("compare-smollm2.sh")


def evaluations(out, *args):
    """The `cometlm eval` argument lists the comparison recipe would run, parsed, and its `eval table` (or None)."""
    from cometlm.cli.eval import register as register_eval

    result = subprocess.run(["bash", str(COMPARE), str(out), *args], capture_output=True, text=True,
                            env={**os.environ, "COMETLM": "echo"})
    assert result.returncode == 0, result.stderr
    parser = argparse.ArgumentParser()
    register_eval(parser.add_subparsers())
    lines = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("eval ")]
    tables = [argv for argv in lines if argv[:2] == ["eval", "table"]]
    assert tables in ([], lines[-1:])  # at most one table, after every evaluation
    return [parser.parse_args(argv) for argv in lines if argv not in tables], (tables or [None])[0]


def test_the_comparison_runs_every_method_on_every_task_with_the_same_prompts(tmp_path):
    ablation = tmp_path / "train" / "passkey-v2g" / "final"
    ablation.mkdir(parents=True)
    (ablation / "comet_config.json").write_text("{}")
    (tmp_path / "train" / "variant").write_text("global-only\n")
    runs, table = evaluations(tmp_path / "out", str(ablation), "--", "--threads", "2")

    names = ["comet", "no-memory", "full", "full-lora", "truncated", "truncated-lora", "sliding-window-lora",
             "sliding-window", "comet-global-only"]
    tasks = ("passkey", "niah", "ppl")
    expected = [(task, name) for name in names for task in (("ppl",) if name == "sliding-window-lora" else tasks)]
    assert [Path(args.out).parts[-2:] for args in runs] == expected
    assert all(args.threads == 2 for args in runs)
    shipped = str(RECIPE.parents[1] / "src" / "cometlm" / "adapters" / "smollm2-135m-passkey")
    by_name = {Path(args.out).name: args for args in runs if args.task == "ppl"}
    methods = ["comet", "no-memory", "full", "full", "truncated", "truncated", "sliding-window", "sliding-window",
               "comet"]
    assert [by_name[n].method for n in names] == methods
    assert all(by_name[n].comet == shipped for n in names if n in ("comet", "no-memory") or n.endswith("-lora"))
    assert by_name["comet-global-only"].comet == str(ablation)
    assert all(by_name[n].comet is None for n in ("full", "truncated", "sliding-window"))  # the base model alone
    grids = {(args.lengths == [1024, 4096], args.trials, args.seed) for args in runs if args.task != "ppl"}
    assert grids == {(False, 3, 0), (True, 3, 0)}
    assert all(args.lengths == [1024, 4096] for args in runs if args.task != "ppl" and args.method == "full")
    # the same draw of held-out windows for everyone: 32k tokens, past the baselines' window; full (which stops at
    # its 8k window) scores other, 8k-token windows, and the table says so
    documents = {(args.corpus, args.documents, args.seed) for args in runs if args.task == "ppl"}
    assert documents == {("bible", 2, 0)}
    assert {(args.method, args.length) for args in runs if args.task == "ppl"} == {
        ("comet", 32768), ("no-memory", 32768), ("full", 8192), ("truncated", 32768), ("sliding-window", 32768)}
    assert table[:2] == ["eval", "table"] and table[-4:] == ["--out", str(tmp_path / "out" / "table.md"), "--plot",
                                                            str(tmp_path / "out" / "table.png")]

    # --models-only: the trained models' rows alone, so that a second process can run them next to the baselines
    only, table = evaluations(tmp_path / "out", "--models-only", str(ablation), "--", "--threads", "1")
    assert [Path(args.out).parts[-2:] for args in only] == [(task, "comet-global-only") for task in tasks]
    assert all(args.comet == str(ablation) and args.threads == 1 for args in only)
    assert table[:2] == ["eval", "table"]

    # --only: these evaluations alone and no table, so that processes sharing OUT never write it at once
    only, table = evaluations(tmp_path / "out", str(ablation), "--only", "sliding-window/niah", "--only",
                              "comet-global-only/ppl")
    assert [Path(args.out).parts[-2:] for args in only] == [("niah", "sliding-window"), ("ppl", "comet-global-only")]
    assert table is None

    result = subprocess.run(["bash", str(COMPARE), str(tmp_path / "out"), str(tmp_path)], capture_output=True,
                            text=True, env={**os.environ, "COMETLM": "echo"})
    assert result.returncode == 2 and "is not a saved CoMeT model" in result.stderr
    result = subprocess.run(["bash", str(COMPARE), str(tmp_path / "out"), "--only", "sliding-window"],
                            capture_output=True, text=True, env={**os.environ, "COMETLM": "echo"})
    assert result.returncode == 2 and "--only takes NAME/TASK" in result.stderr


GENERAL = RECIPE.with_name("general-smollm2.sh")
SUITES_COMPARE = RECIPE.with_name("suites-compare-smollm2.sh")


def general_recipe(out: Path, verdict: str | None = None, g9m_verdict: str | None = None,
                   g9g_verdict: str | None = None, g10_verdict: str | None = None, g10c_verdict: str | None = None,
                   more: dict | None = None):
    """The general recipe's commands with every program echoed; ``verdict`` pre-written as g8's rule's,
    ``g9m_verdict`` as g9m's, ``g9g_verdict`` as g9g's, ``g10_verdict`` as g10's, ``g10c_verdict`` as g10c's, and
    ``more`` maps "FOLDER/FILE" to a verdict for the rules with named verdict files."""
    rules = out / "rules"
    written = {f"{phase}/verdict": said for phase, said in (
        ("g8-step-200", verdict), ("g9m-step-200", g9m_verdict), ("g9g-step-100", g9g_verdict),
        ("g10-step-200", g10_verdict), ("g10c-step-100", g10c_verdict))}
    for name, said in {**written, **(more or {})}.items():
        if said is not None:
            (rules / name).parent.mkdir(parents=True, exist_ok=True)
            (rules / name).write_text(said + "\n")
    return subprocess.run(["bash", str(GENERAL), str(out), "--", "--threads", "1"], capture_output=True, text=True,
                          env={**os.environ, "COMETLM": "echo", "PYTHON": "echo", "RULE": "echo", "RULES": str(rules)})


def train_runs(result):
    return [parse(shlex.split(line)) for line in result.stdout.splitlines() if line.startswith("train ")]


def test_the_general_recipe_continues_the_passkey_adapter_on_data_that_loads(tmp_path, tokenizer):
    from cometlm.training.specs import load_mixture

    # Without a verdict on g8 the recipe measures g8's rule and stops there (the echoed measurement writes none).
    result = general_recipe(tmp_path)
    assert result.returncode == 3 and "g8's rule has no verdict" in result.stderr
    rules = tmp_path / "rules"
    assert f"{tmp_path}/general-g8/final {rules}/g8-step-200 2048 1024" in result.stdout.splitlines()
    assert f"{rules}/g8-step-200 --global-at 2048=0.525 1024=0.65" in result.stderr
    runs = train_runs(result)
    assert len(runs) == 8 and all(r.threads == 1 and r.dtype == "bfloat16" for r in runs)
    g1, g2, g3, g4, g5, g6, g7, g8 = runs
    assert g1.comet == str(RECIPE.parents[1] / "src" / "cometlm" / "adapters" / "smollm2-135m-passkey")
    assert (g1.stop_at, g1.max_steps) == (400, 800)  # stopped at step 400 by the rule fixed before it
    assert g2.comet == str(tmp_path / "general-g1" / "final") and g2.output_dir == str(tmp_path / "general-g2")
    for run in runs:
        weights = [float(spec.rpartition("@")[2]) for spec in run.data]
        assert abs(sum(weights) - 1) < 1e-9
        # every task source draws from the training split (none asks for split=test), and each builds a sample
        assert not any("split=" in spec for spec in run.data)
        mixture = load_mixture(run.data, tokenizer, run.max_length, seed=0)
        samples = [mixture[i] for i in range(8)]
        assert all(len(s.input_ids) <= run.max_length and any(t != -100 for t in s.labels) for s in samples)
    # g2, g3 and g4 keep to single facts: no multi-key, multi-value, variable-tracking or multi-fact babilong source
    for run in (g2, g3, g4):
        assert not any(name in spec for spec in run.data for name in ("multikey", "multivalue", "multiquery",
                                                                        "ruler-vt", "qa2", "qa3", "qa4", "qa5"))
    # g3 continues g2 with keys of 3 to 9 digits (the rule fixed in session 20)
    assert g3.comet == str(tmp_path / "general-g2" / "final") and g3.output_dir == str(tmp_path / "general-g3")
    assert [spec for spec in g3.data if spec.startswith("passkey")] == ["passkey:digits=3-9@0.20"]
    # g4 continues g3 with g3's sources, every task source's answer ending in EOS, the loss weighted by sample (the
    # amendments of session 25); the earlier phases keep the token weighting they were trained with
    assert g4.comet == str(tmp_path / "general-g3" / "final") and g4.output_dir == str(tmp_path / "general-g4")
    assert [r.loss_weighting for r in runs] == ["token", "token", "token"] + ["sample"] * 5
    tasks = [spec for spec in g4.data if not spec.startswith(("passkey", "lm:"))]
    assert tasks and all(",eos=1@" in spec or ":eos=1@" in spec for spec in tasks)
    assert [spec.replace(",eos=1", "").replace(":eos=1", "") for spec in g4.data] == g3.data
    # g5: g4's data from g4's adapter with its gates reset (session 27), the gate weights at 0.01 of the memory's rate
    reset = [line.split() for line in result.stdout.splitlines() if "reset_gates.py" in line]
    assert len(reset) == 1 and reset[0][1:] == [str(tmp_path / "general-g4" / "final"), "--out",
                                                str(tmp_path / "general-g5-start")]
    assert g5.comet == str(tmp_path / "general-g5-start") and g5.output_dir == str(tmp_path / "general-g5")
    assert g5.data == g4.data and g5.seed != g4.seed
    assert [r.gate_weight_lr_multiplier for r in runs] == [1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 0.1, 0.1]
    # g6: g5's recipe from g5's adapter on prompts of at most 384 tokens (skill first, session 28)
    assert g6.comet == str(tmp_path / "general-g5" / "final") and g6.output_dir == str(tmp_path / "general-g6")
    assert g6.data == g5.data and g6.max_length == 384 and g5.max_length == 1024 and g6.seed not in (g5.seed, g4.seed)
    # g7: g6's sources but QA1 (its weight spread in proportion), from g6's adapter at 1,024 tokens, the gate weights
    # at 0.1 of the memory's rate (session 29)
    assert g7.comet == str(tmp_path / "general-g6" / "final") and g7.output_dir == str(tmp_path / "general-g7")
    assert g7.max_length == 1024 and g7.seed not in [r.seed for r in runs[:-2]]
    names = lambda run: [spec.rpartition("@")[0] for spec in run.data]  # noqa: E731
    assert names(g7) == [n for n in names(g6) if not n.startswith("babilong-qa1")]
    kept = {n: float(spec.rpartition("@")[2]) for n, spec in zip(names(g6), g6.data)}
    assert all(abs(float(spec.rpartition("@")[2]) - kept[n] / 0.85) < 0.006 for n, spec in zip(names(g7), g7.data))
    # g8: g7's recipe from g7's adapter on prompts of up to 2,048 tokens, 200 steps, a seed of its own (session 30)
    assert g8.comet == str(tmp_path / "general-g7" / "final") and g8.output_dir == str(tmp_path / "general-g8")
    assert g8.data == g7.data and (g8.max_length, g8.max_steps) == (2048, 200)
    assert [r.batch_size * r.grad_accum for r in runs] == [8] * 8 and (g8.batch_size, g8.grad_accum) == (4, 2)
    assert g8.seed not in [r.seed for r in runs[:-1]]


def source(spec: str) -> tuple[str, tuple[str, ...]]:
    """A --data spec's name and options without its weight and its depth."""
    name, _, options = spec.rpartition("@")[0].partition(":")
    return name, tuple(o for o in options.split(",") if o and not o.startswith("depth="))


def weight(spec: str) -> float:
    return float(spec.rpartition("@")[2])


def test_the_general_recipe_follows_g8s_rule(tmp_path, tokenizer):
    """The branch fixed in session 31 before g8's result: pass -> g9 at 4,096 tokens, fail -> g9m, the memory-focused
    curriculum at 2,048; both with aligned chunk plans and length grouping, each followed by its rule's measurement."""
    from cometlm.training.specs import load_mixture

    g8 = train_runs(general_recipe(tmp_path / "none"))[-1]
    for verdict, name in (("pass", "general-g9"), ("fail", "general-g9m")):
        out = tmp_path / verdict
        result = general_recipe(out, verdict, g9m_verdict="fail", g9g_verdict="fail")
        assert result.returncode == 0, result.stderr
        runs = train_runs(result)
        assert len(runs) == (9 if verdict == "pass" else 10)  # g9m's failed rule brings g9g (below)
        run = runs[8]
        assert run.comet == str(out / "general-g8" / "final") and run.output_dir == str(out / name)
        assert run.seed not in [r.seed for r in runs[:8]] and run.group_by_length
        assert run.chunk_augmentation == [*g8.chunk_augmentation, "aligned=1"]
        assert (run.batch_size * run.grad_accum, run.loss_weighting, run.gate_weight_lr_multiplier) == (8, "sample", 0.1)
        assert abs(sum(map(weight, run.data)) - 1) < 1e-9
        assert not any("split=" in spec for spec in run.data)
        mixture = load_mixture(run.data, tokenizer, run.max_length, seed=0)
        assert all(len(mixture[i].input_ids) <= run.max_length for i in range(8))
        measured = [line for line in result.stdout.splitlines() if line.startswith(str(out / "general-g"))]
        if verdict == "pass":
            assert run.data == g8.data and (run.max_length, run.max_steps) == (4096, 100)
            assert (run.batch_size, run.grad_accum) == (2, 4)
            # g8 at 4,096 first (the rule of g9 compares with it), then g9's own at 4,096 and 2,048
            assert measured == [f"{out}/general-g8/final {out}/rules/g8-step-200 4096",
                                f"{out}/general-g9/final {out}/rules/g9-step-100 4096 2048"]
        else:
            assert (run.max_length, run.max_steps, run.batch_size, run.grad_accum) == (2048, 200, 4, 2)
            tasks = [spec for spec in run.data if not spec.startswith("lm:")]
            assert all(spec.startswith(("passkey:", "ruler-niah-single:")) and "depth=0-75" in spec for spec in tasks)
            assert [spec for spec in run.data if spec.startswith("lm:")] == ["lm:bible@0.035", "lm:essays@0.035"]
            # the memory sources with g8's options but the depth, their g8 weights' proportions scaled to 0.93
            kept = {source(spec): weight(spec) for spec in g8.data if spec.startswith(("passkey", "ruler-niah-single"))}
            scaled = {source(spec): weight(spec) for spec in tasks}
            assert scaled.keys() == kept.keys()
            assert all(abs(scaled[k] - kept[k] * 0.93 / sum(kept.values())) < 0.001 for k in kept)
            assert measured[0] == f"{out}/general-g9m/final {out}/rules/g9m-step-200 2048 1024"


def test_g9ms_rule_brings_the_tasks_back_or_centres_the_gates(tmp_path):
    """The branches fixed before g9m's result: pass -> g10, g8's recipe exactly from g9m's adapter, then its rule's
    measurements (session 34); fail -> g9g, g9m's recipe for 100 steps from g9m's adapter with its gates' input
    centred and the gate weights at the memory's full rate, then g9g's rule (session 36); no verdict -> status 3."""
    runs = train_runs(general_recipe(tmp_path / "fail", "fail", "fail", "fail"))
    g8, g9m = runs[-3], runs[-2]
    result = general_recipe(tmp_path / "none", "fail")
    assert result.returncode == 3 and "g9m's rule has no verdict" in result.stderr
    assert f"{tmp_path}/none/rules/g9m-step-200 --global-at 2048=0.446" in result.stderr  # the threshold of session 31
    assert len(train_runs(result)) == 9
    out = tmp_path / "pass"
    result = general_recipe(out, "fail", "pass")
    assert result.returncode == 3 and "g10's rule has no verdict" in result.stderr
    runs = train_runs(result)
    assert len(runs) == 10
    g10 = runs[-1]
    assert g10.comet == str(out / "general-g9m" / "final") and g10.output_dir == str(out / "general-g10")
    assert g10.data == g8.data and (g10.max_length, g10.max_steps) == (g8.max_length, g8.max_steps) == (2048, 200)
    assert g10.seed not in [r.seed for r in runs[:-1]] and g10.group_by_length
    assert g10.chunk_augmentation == g9m.chunk_augmentation and "aligned=1" in g10.chunk_augmentation
    assert (g10.batch_size, g10.grad_accum, g10.loss_weighting, g10.gate_weight_lr_multiplier, g10.lr) == (
        g8.batch_size, g8.grad_accum, g8.loss_weighting, g8.gate_weight_lr_multiplier, g8.lr)
    measured = [line for line in result.stdout.splitlines() if line.startswith(str(out / "general-g"))]
    assert measured == [f"{out}/general-g9m/final {out}/rules/g9m-step-200 2048 1024",
                        f"{out}/general-g10/final {out}/rules/g10-step-200 2048 1024"]
    # fail: g9g from g9m's adapter with centred gates (the same function), g9m's data, 100 steps, gate weights at 1
    out = tmp_path / "g9g"
    result = general_recipe(out, "fail", "fail")
    assert result.returncode == 3 and "g9g's rule has no verdict" in result.stderr
    assert f"{out}/rules/g9g-step-100 --global-at 2048=0.446" in result.stderr  # g9m's bar
    centring = [line.split() for line in result.stdout.splitlines() if "reset_gates.py" in line][-1]
    assert centring[1:] == [str(out / "general-g9m" / "final"), "--out", str(out / "general-g9g-start"), "--center"]
    runs = train_runs(result)
    assert len(runs) == 10
    g9g = runs[-1]
    assert g9g.comet == str(out / "general-g9g-start") and g9g.output_dir == str(out / "general-g9g")
    assert g9g.data == g9m.data and (g9g.max_length, g9g.max_steps) == (2048, 100)
    assert g9g.gate_weight_lr_multiplier == 1 and g9m.gate_weight_lr_multiplier == 0.1
    assert g9g.seed not in [r.seed for r in runs[:-1]] and g9g.group_by_length
    assert (g9g.batch_size, g9g.grad_accum, g9g.loss_weighting, g9g.lr, g9g.chunk_augmentation) == (
        g9m.batch_size, g9m.grad_accum, g9m.loss_weighting, g9m.lr, g9m.chunk_augmentation)
    measured = [line for line in result.stdout.splitlines() if line.startswith(str(out / "general-g"))]
    assert measured[-1] == f"{out}/general-g9g/final {out}/rules/g9g-step-100 2048 1024"
    result = general_recipe(tmp_path / "g9g-fail", "fail", "fail", "fail")
    assert result.returncode == 0 and len(train_runs(result)) == 10 and "nothing more is trained" in result.stdout
    out = tmp_path / "g9g-pass"
    result = general_recipe(out, "fail", "fail", "pass")
    assert result.returncode == 0, result.stderr
    runs = train_runs(result)
    g10g = runs[-1]
    assert len(runs) == 11 and g10g.comet == str(out / "general-g9g" / "final")
    assert g10g.data == g8.data and (g10g.max_length, g10g.max_steps) == (2048, 200)
    assert g10g.gate_weight_lr_multiplier == 1 and g10g.seed not in [r.seed for r in runs[:-1]]
    measured = [line for line in result.stdout.splitlines() if line.startswith(str(out / "general-g"))]
    assert measured[-1] == f"{out}/general-g10g/final {out}/rules/g10g-step-200 2048 1024"


def test_g10s_rule_lengthens_the_prompts_or_stops(tmp_path):
    """g10's rule (session 34) read by the recipe: the probes' mean at least 0.36 and the global column at 2,048 at
    most 1.1x g9m's 0.420; pass -> g10 measured at 4,096, then g11, g9's recipe from g10's adapter, then its rule's
    measurements (session 37); fail -> the g10c / g10x A/B (session 38, below); no verdict -> status 3."""
    result = general_recipe(tmp_path / "none", "fail", "pass")
    assert f"{tmp_path}/none/rules/g10-step-200 --global-at 2048=0.462 --probes-at-least 0.36" in result.stderr
    g9 = train_runs(general_recipe(tmp_path / "g9", "pass"))[-1]
    out = tmp_path / "pass"
    result = general_recipe(out, "fail", "pass", g10_verdict="pass")
    assert result.returncode == 0, result.stderr
    runs = train_runs(result)
    g10, g11 = runs[-2:]
    assert len(runs) == 11 and g11.comet == str(out / "general-g10" / "final")
    assert g11.output_dir == str(out / "general-g11") and g11.seed not in [r.seed for r in runs[:-1]]
    assert (g11.data, g11.max_length, g11.max_steps, g11.batch_size, g11.grad_accum) == (
        g9.data, g9.max_length, g9.max_steps, g9.batch_size, g9.grad_accum) == (g10.data, 4096, 100, 2, 4)
    assert (g11.lr, g11.loss_weighting, g11.gate_weight_lr_multiplier, g11.chunk_augmentation, g11.group_by_length) == (
        g10.lr, g10.loss_weighting, g10.gate_weight_lr_multiplier, g10.chunk_augmentation, True)
    measured = [line for line in result.stdout.splitlines() if line.startswith(str(out / "general-g"))]
    assert measured[-2:] == [f"{out}/general-g10/final {out}/rules/g10-step-200 4096",
                             f"{out}/general-g11/final {out}/rules/g11-step-100 4096 2048"]


def test_g10s_failed_rule_tests_centred_gates_against_a_control(tmp_path):
    """g10's fail branch (session 38): g10c (g10's adapter with its gates' input centred, the gate weights at the
    full rate) and g10x (g10's adapter as it is, the rate at a tenth), both g10's recipe for 100 steps with one seed;
    g10c passes with a global column at 2,048 at most 0.9x g10x's; pass -> g11c, g11's recipe from g10c at the full
    rate; fail -> nothing more trained; no verdict -> status 3."""
    out = tmp_path / "none"
    result = general_recipe(out, "fail", "pass", g10_verdict="fail")
    assert result.returncode == 3 and "g10c's rule has no verdict" in result.stderr
    assert f"{out}/rules/g10c-step-100 --global-at 2048=0.9 --relative-to {out}/rules/g10x-step-100" in result.stderr
    centring = [line.split() for line in result.stdout.splitlines() if "reset_gates.py" in line][-1]
    assert centring[1:] == [str(out / "general-g10" / "final"), "--out", str(out / "general-g10c-start"), "--center"]
    runs = train_runs(result)
    assert len(runs) == 12
    g10, g10c, g10x = runs[-3:]
    assert g10c.comet == str(out / "general-g10c-start") and g10c.output_dir == str(out / "general-g10c")
    assert g10x.comet == str(out / "general-g10" / "final") and g10x.output_dir == str(out / "general-g10x")
    assert (g10c.gate_weight_lr_multiplier, g10x.gate_weight_lr_multiplier, g10.gate_weight_lr_multiplier) == (
        1, 0.1, 0.1)
    assert g10c.seed == g10x.seed and g10c.seed not in [r.seed for r in runs[:-2]]
    for arm in (g10c, g10x):  # g10's recipe but the steps: the arms differ by their gates alone
        assert (arm.data, arm.max_length, arm.lr, arm.warmup_steps, arm.loss_weighting, arm.batch_size,
                arm.grad_accum, arm.chunk_augmentation, arm.group_by_length) == (
            g10.data, g10.max_length, g10.lr, g10.warmup_steps, g10.loss_weighting, g10.batch_size, g10.grad_accum,
            g10.chunk_augmentation, g10.group_by_length)
        assert arm.max_steps == 100
    measured = [line for line in result.stdout.splitlines() if line.startswith(str(out / "general-g"))]
    assert measured[-2:] == [f"{out}/general-g10c/final {out}/rules/g10c-step-100 2048",
                             f"{out}/general-g10x/final {out}/rules/g10x-step-100 2048"]
    result = general_recipe(tmp_path / "fail", "fail", "pass", g10_verdict="fail", g10c_verdict="fail",
                            more={"g10x-logs/open": "pass", "g10x-logs/global": "pass"})
    assert result.returncode == 0, result.stderr
    assert len(train_runs(result)) == 12 and "g10c missed its rule" in result.stdout
    g11 = train_runs(general_recipe(tmp_path / "g11", "fail", "pass", g10_verdict="pass"))[-1]
    out = tmp_path / "pass"
    result = general_recipe(out, "fail", "pass", g10_verdict="fail", g10c_verdict="pass")
    assert result.returncode == 0, result.stderr
    runs = train_runs(result)
    g11c = runs[-1]
    assert len(runs) == 13 and g11c.comet == str(out / "general-g10c" / "final")
    assert g11c.output_dir == str(out / "general-g11c") and g11c.seed not in [r.seed for r in runs[:-1]]
    assert (g11c.data, g11c.max_length, g11c.max_steps, g11c.batch_size, g11c.grad_accum, g11c.lr,
            g11c.chunk_augmentation) == (g11.data, 4096, 100, 2, 4, g11.lr, g11.chunk_augmentation)
    assert (g11c.gate_weight_lr_multiplier, g11.gate_weight_lr_multiplier) == (1, 0.1)
    measured = [line for line in result.stdout.splitlines() if line.startswith(str(out / "general-g"))]
    assert measured[-2:] == [f"{out}/general-g10c/final {out}/rules/g10c-step-100 4096",
                             f"{out}/general-g11c/final {out}/rules/g11c-step-100 4096 2048"]


def test_g10cs_failed_rule_measures_the_log_tasks_on_the_control(tmp_path, tokenizer):
    """What follows a failed g10c (session 40, before either arm's result; g11s's details in session 41, before
    g10x's): the log tasks' answer loss by the fact's distance at 2,048 on g10x's adapter; open column above 0.3 ->
    g11s, skill first (g6's recipe from g10x, MEMORY_TASKS with the log tasks' weights doubled); open at most 0.3 and
    global above 0.6 -> the memory's size next; both low -> the probes at 4,096 next; nothing trained in either."""
    from cometlm.training.specs import load_mixture

    def run(name, **more):
        out = tmp_path / name
        result = general_recipe(out, "fail", "pass", g10_verdict="fail", g10c_verdict="fail",
                                more={f"{k.replace('__', '/').replace('_', '-')}": v for k, v in more.items()})
        measured = [line.split() for line in result.stdout.splitlines() if "answer_loss.py" in line]
        return out, result, train_runs(result), measured

    out, result, runs, measured = run("none")
    assert result.returncode == 3 and "g10x-logs's rule has no verdict" in result.stderr
    assert len(runs) == 12
    assert len(measured) == 1 and measured[0][0].endswith("docs/experiments/sizes/answer_loss.py")
    assert measured[0][1:] == [  # the command fixed in session 40
        str(out / "general-g10x" / "final"), "--sizes", "128:16", "--max-length", "2048", "--data",
        "agent-qa:depth=0-100", "user-qa:depth=0-100", "--samples", "48", "--seed", "901", "--threads", "2", "--out",
        str(out / "rules" / "g10x-logs" / "distance-2048.json")]
    assert f"{out}/rules/g10x-logs --global-at 2048=0.3 --column open --verdict-name open" in result.stderr
    assert f"{out}/rules/g10x-logs --global-at 2048=0.6 --verdict-name global" in result.stderr

    g10, g10x = runs[-3], runs[-1]
    for global_verdict in ("pass", "fail"):  # the skill is missing whatever the global column says
        out, result, runs, measured = run(f"skill-{global_verdict}", g10x_logs__open="fail",
                                          g10x_logs__global=global_verdict)
        assert result.returncode == 3 and "g11s's rule has no verdict" in result.stderr
        assert f"{out}/rules/g11s-step-300 --global-at 384=0.3 --column open" in result.stderr
        assert len(runs) == 13
        g11s = runs[-1]
        assert g11s.comet == str(out / "general-g10x" / "final") and g11s.output_dir == str(out / "general-g11s")
        assert (g11s.max_length, g11s.max_steps, g11s.lr, g11s.warmup_steps, g11s.loss_weighting) == (
            384, 300, 3e-4, 10, "sample")
        assert g11s.gate_weight_lr_multiplier == g10x.gate_weight_lr_multiplier == 0.1
        assert g11s.seed not in [r.seed for r in runs[:-1]] and g11s.batch_size * g11s.grad_accum == 8
        # g10's sources with the log tasks' weights doubled, renormalised
        assert [spec.rpartition("@")[0] for spec in g11s.data] == [spec.rpartition("@")[0] for spec in g10.data]
        doubled = [weight(spec) * (2 if spec.startswith(("agent-qa", "user-qa")) else 1) for spec in g10.data]
        assert all(abs(weight(spec) - w / sum(doubled)) < 0.001 for spec, w in zip(g11s.data, doubled))
        assert abs(sum(map(weight, g11s.data)) - 1) < 1e-9
        mixture = load_mixture(g11s.data, tokenizer, g11s.max_length, seed=0)
        assert all(len(mixture[i].input_ids) <= 384 for i in range(8))
        assert [m[m.index("--max-length") + 1] for m in measured[1:]] == ["384", "2048"]
        assert all(m[1] == str(out / "general-g11s" / "final") for m in measured[1:])
    # What follows g11s (session 42, before its result). Pass: g12, g8's settings on g11s's mixture from g11s,
    # its rule the log tasks' global column against g11s's and the needles' against g10x's.
    g8 = runs[7]
    out, result, runs, measured = run("g11s-pass", g10x_logs__open="fail", g10x_logs__global="fail",
                                      g11s_step_300__verdict="pass")
    assert result.returncode == 3 and "g12's rule has no verdict" in result.stderr
    assert "g11s met its rule" in result.stdout and len(runs) == 14
    g11s, g12 = runs[-2:]
    assert g12.comet == str(out / "general-g11s" / "final") and g12.output_dir == str(out / "general-g12")
    assert g12.data == g11s.data and g12.seed not in [r.seed for r in runs[:-1]]
    assert (g12.max_length, g12.max_steps, g12.lr, g12.warmup_steps, g12.loss_weighting, g12.batch_size,
            g12.grad_accum, g12.chunk_augmentation, g12.gate_weight_lr_multiplier) == (
        g8.max_length, 200, g8.lr, g8.warmup_steps, g8.loss_weighting, g8.batch_size, g8.grad_accum,
        g8.chunk_augmentation, g8.gate_weight_lr_multiplier)
    assert f"{out}/general-g12/final {out}/rules/g12-step-200 2048" in result.stdout.splitlines()
    assert measured[-1][1] == str(out / "general-g12" / "final") and measured[-1][-1] == str(
        out / "rules" / "g12-logs" / "distance-2048.json")
    assert f"{out}/rules/g12-logs --global-at 2048=0.9 --relative-to {out}/rules/g11s-step-300" in result.stderr
    assert f"{out}/rules/g12-step-200 --global-at 2048=1.1 --relative-to {out}/rules/g10x-step-100" in result.stderr
    for logs, needles, words in (("pass", "pass", "g12 met its rule"), ("pass", "fail", "g12 missed its rule"),
                                 ("fail", "pass", "g12 missed its rule")):
        out, result, runs, _ = run(f"g12-{logs}-{needles}", g10x_logs__open="fail", g10x_logs__global="fail",
                                   g11s_step_300__verdict="pass", g12_logs__verdict=logs,
                                   g12_step_200__verdict=needles)
        assert result.returncode == 0, result.stderr
        assert len(runs) == 14 and words in result.stdout
    # Fail: nothing trained; the same samples read in one chunk of 512 (the 384-token prompt whole, in view).
    out, result, runs, measured = run("g11s-fail", g10x_logs__open="fail", g10x_logs__global="fail",
                                      g11s_step_300__verdict="fail")
    assert result.returncode == 3 and "g11s-in-view's rule has no verdict" in result.stderr
    assert "g11s missed its rule" in result.stdout and len(runs) == 13
    one_chunk = measured[-1]
    assert one_chunk[1] == str(out / "general-g11s" / "final")
    assert one_chunk[one_chunk.index("--sizes") + 1] == "512:16" and one_chunk[
        one_chunk.index("--max-length") + 1] == "384"
    assert f"{out}/rules/g11s-in-view --global-at 384=0.3 --column open --sizes 512:16" in result.stderr
    for said, words in (("pass", "CoMeT's chunked reading disturbs"), ("fail", "not even in one chunk")):
        out, result, runs, _ = run(f"in-view-{said}", g10x_logs__open="fail", g10x_logs__global="fail",
                                   g11s_step_300__verdict="fail", g11s_in_view__verdict=said)
        assert result.returncode == 0, result.stderr
        assert len(runs) == 13 and words in result.stdout
    for global_verdict, words in (("fail", "the memory's size"), ("pass", "the probes are measured at 4,096")):
        out, result, runs, measured = run(f"memory-{global_verdict}", g10x_logs__open="pass",
                                          g10x_logs__global=global_verdict)
        assert result.returncode == 0, result.stderr
        assert len(runs) == 12 and len(measured) == 1 and words in result.stdout


def test_the_rule_verdict_reads_the_probes_mean(tmp_path):
    verdict = RECIPE.parents[1] / "docs" / "experiments" / "rule_verdict.py"

    def run(at_least):
        return subprocess.run([sys.executable, str(verdict), str(tmp_path), "--global-at", "2048=0.5",
                               "--probes-at-least", at_least], capture_output=True, text=True)

    means = {"open": 0.1, "queue": 0.4, "global": 0.45}
    (tmp_path / "distance-2048.json").write_text(json.dumps({"mean_by_distance": {"128:16": means}}))
    result = run("0.36")  # no probes yet: no verdict, nothing written
    assert result.returncode == 2 and "probe.txt does not exist" in result.stderr
    assert not (tmp_path / "verdict").exists()
    (tmp_path / "probe.txt").write_text("babilong-qa1 mean       0.00\nuser-qa mean       0.80\n")
    assert run("0.4").stdout.splitlines()[-2:] == ["probes' mean (probe.txt): 0.400 (at least 0.400: met)", "pass"]
    assert run("0.41").stdout.splitlines()[-1] == "fail"
    assert (tmp_path / "verdict").read_text() == "fail\n"
    # a named verdict (a rule with two conditions on one measurement) leaves the other verdicts alone
    named = [sys.executable, str(verdict), str(tmp_path), "--global-at", "2048=0.2", "--column", "open"]
    result = subprocess.run([*named, "--verdict-name", "open"], capture_output=True, text=True)
    assert result.stdout.splitlines()[-2:] == ["open loss at  2,048 tokens: 0.100 (at most 0.200: met)", "pass"]
    assert (tmp_path / "open").read_text() == "pass\n" and (tmp_path / "verdict").read_text() == "fail\n"
    for bad in ("../open", "", "."):
        result = subprocess.run([*named, "--verdict-name", bad], capture_output=True, text=True)
        assert result.returncode == 2 and "takes a file name" in result.stderr
    (tmp_path / "probe.txt").write_text("babilong-qa1 mean       0.00\nuser-qa Traceback\n")  # a broken probe
    result = run("0.1")
    assert result.returncode == 2 and "not 'TASK mean SCORE'" in result.stderr


def test_the_suites_comparison_runs_every_method_on_every_task_with_the_same_grid(tmp_path):
    from cometlm.cli.eval import register as register_eval

    def commands(*args):
        result = subprocess.run(["bash", str(SUITES_COMPARE), str(tmp_path), *args], capture_output=True, text=True,
                                env={**os.environ, "COMETLM": "echo"})
        assert result.returncode == 0, result.stderr
        parser = argparse.ArgumentParser()
        register_eval(parser.add_subparsers())
        return [parser.parse_args(shlex.split(line)) for line in result.stdout.splitlines() if line.startswith("eval ")]

    runs = commands("--", "--threads", "1")
    assert len(runs) == 8 * 14 and all(args.threads == 1 for args in runs)
    by_method = {}
    for args in runs:
        by_method.setdefault(Path(args.out).name, []).append(args)
    assert all(len({a.task for a in group}) == 14 for group in by_method.values())
    windows = {name: (group[0].method, group[0].window) for name, group in by_method.items()}
    # CoMeT's budget, 176 keys a token at most: the last 176 tokens, or 4 sinks + 44 older tokens + a 128-token block
    cache = by_method["sliding-window-cache"][0]
    assert cache.sink_tokens + cache.window + READ_BLOCK == by_method["truncated-cache"][0].window == 176
    assert shipped_key_budget() == 176
    assert windows == {"truncated-cache": ("truncated", 176), "sliding-window-cache": ("sliding-window", 44),
                       "full": ("full", None), "full-lora": ("full", None), "truncated": ("truncated", None),
                       "no-memory": ("no-memory", None), "comet": ("comet", None),
                       "sliding-window": ("sliding-window", None)}
    for args in runs:
        full = args.method == "full"
        at_32k = 1 if Path(args.out).name == "sliding-window" else 3  # the budget clause: 1 trial at 32k there
        assert args.lengths == ([4096] if full else [4096, 16384, 32768]) and args.depths == [50]
        assert args.trials == 5 and args.trials_at == ([] if full else [(32768, at_32k)]) and args.seed == 0
    only = commands("--only", "comet", "--tasks", "user-qa")
    assert [(a.task, Path(a.out).name) for a in only] == [("user-qa", "comet")]
    result = subprocess.run(["bash", str(SUITES_COMPARE), str(tmp_path), "--only", "rag"], capture_output=True,
                            text=True, env={**os.environ, "COMETLM": "echo"})
    assert result.returncode == 2 and "--only takes one of" in result.stderr
    # another adapter (the general one) for the methods that use one, 5 trials at 32k
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "comet_config.json").write_text("{}")
    other = commands("--comet", str(adapter), "--only", "comet", "--only", "no-memory", "--only", "full-lora",
                     "--tasks", "babilong-qa1", "--", "--trials-at", "32768=5")
    assert [(Path(a.out).name, a.comet, a.trials_at) for a in other] == [
        ("comet", str(adapter), [(32768, 5)]), ("no-memory", str(adapter), [(32768, 5)]),
        ("full-lora", str(adapter), [(32768, 5)])]
    assert [a.lengths for a in other] == [[4096, 16384, 32768]] * 2 + [[4096]]
    assert [a.comet for a in runs if Path(a.out).name == "comet"][0].endswith("smollm2-135m-passkey")
    result = subprocess.run(["bash", str(SUITES_COMPARE), str(tmp_path), "--comet", str(tmp_path / "none")],
                            capture_output=True, text=True, env={**os.environ, "COMETLM": "echo"})
    assert result.returncode == 2 and "--comet takes a saved CoMeT adapter folder" in result.stderr


def test_the_rule_verdict_reads_the_global_column_at_each_length(tmp_path):
    verdict = RECIPE.parents[1] / "docs" / "experiments" / "rule_verdict.py"

    def run(*limits):
        return subprocess.run([sys.executable, str(verdict), str(tmp_path), "--global-at", *limits],
                              capture_output=True, text=True)

    def measured(length, global_loss):
        means = {"open": 0.1, "queue": 0.4, "global": global_loss}
        (tmp_path / f"distance-{length}.json").write_text(json.dumps({"mean_by_distance": {"128:16": means}}))

    measured(2048, 0.50)
    result = run("2048=0.525", "1024=0.65")  # 1,024 not measured: no verdict, nothing written
    assert result.returncode == 2 and "distance-1024.json does not exist" in result.stderr
    assert not (tmp_path / "verdict").exists()
    measured(1024, 0.66)
    assert run("2048=0.525", "1024=0.65").stdout.splitlines()[-1] == "fail"
    assert (tmp_path / "verdict").read_text() == "fail\n"
    measured(1024, 0.65)  # at the threshold passes
    assert run("2048=0.525", "1024=0.65").stdout.splitlines()[-1] == "pass"
    assert (tmp_path / "verdict").read_text() == "pass\n"
    assert run("2048=0.49").stdout.splitlines()[-1] == "fail"
    (tmp_path / "distance-4096.json").write_text("{}")
    result = run("4096=1")
    assert result.returncode == 2 and "no global mean" in result.stderr
    assert (tmp_path / "verdict").read_text() == "fail\n"  # the last verdict stays; the recipe reads it only once



def test_the_rule_verdict_compares_two_arms(tmp_path):
    """--relative-to: each threshold is a factor of the other arm's mean at that length (g10's A/B, session 38), and
    only between arms measured alike; a loss that is not a finite number is no measurement."""
    verdict = RECIPE.parents[1] / "docs" / "experiments" / "rule_verdict.py"
    arm, control = tmp_path / "arm", tmp_path / "control"
    sources = ["passkey:digits=3-9", "ruler-niah-single:depth=0-100"]

    def measured(folder, global_loss, length=2048, **changes):
        folder.mkdir(exist_ok=True)
        means = {"open": 0.1, "queue": 0.4, "global": global_loss}
        record = {"max_length": length, "seed": 901, "samples": 48, "dtype": "bfloat16",
                  "rows": [{"chunk_size": 128, "temp_capacity": 16, "data": d} for d in sources],
                  "mean_by_distance": {"128:16": means}, **changes}
        (folder / f"distance-{length}.json").write_text(json.dumps(record))  # NaN and Infinity as json writes them

    def run(limit="2048=0.9"):
        return subprocess.run([sys.executable, str(verdict), str(arm), "--global-at", limit, "--relative-to",
                               str(control)], capture_output=True, text=True)

    measured(arm, 0.45)
    result = run()  # the control not measured yet: no verdict, nothing written
    assert result.returncode == 2 and "distance-2048.json does not exist" in result.stderr
    assert not (arm / "verdict").exists()
    measured(control, 0.5)
    result = run()
    assert result.stdout.splitlines() == ["global loss at  2,048 tokens: 0.450 (at most 0.450 = 0.9x 0.500: met)",
                                          "pass"]
    measured(arm, 0.451)
    assert run().stdout.splitlines()[-1] == "fail" and (arm / "verdict").read_text() == "fail\n"
    assert run("2048=1").stdout.splitlines()[-1] == "pass"  # the factor is read, not a fixed loss
    for what, changes in [("seed 901 against 900", dict(seed=900)), ("samples 48 against 24", dict(samples=24)),
                          ("against 'float32'", dict(dtype="float32")), ("sources", dict(rows=[]))]:
        measured(control, 0.5, **changes)
        result = run("2048=1")
        assert result.returncode == 2 and "not measured alike" in result.stderr and what in result.stderr, what
    measured(control, 0.5, max_length=1024)
    assert run().returncode == 2
    (arm / "verdict").unlink()
    for arm_loss, control_loss in [(float("nan"), 0.5), (0.45, float("nan")), (3.0, float("inf"))]:
        measured(arm, arm_loss)
        measured(control, control_loss)
        result = run()
        assert result.returncode == 2 and "not a finite loss" in result.stderr and not (arm / "verdict").exists()
    assert run("2048=nan").returncode == 2  # argparse refuses a threshold that is no number

def test_centring_an_adapters_gates_keeps_what_it_computes(tmp_path, tiny_model_dir):
    """`reset_gates.py --center` (session 36): the copy's gates read their input less its mean, the bias raised to
    match, so the copy reads a prompt as the adapter does; a centred adapter is not centred twice."""
    import torch

    from cometlm import CometForCausalLM
    from conftest import randomize_memory

    script = RECIPE.parents[1] / "docs" / "experiments" / "reset_gates.py"
    config = CometConfig(chunk_size=32, global_slots=2, temp_capacity=8, attention_sink=True)
    adapter = randomize_memory(CometForCausalLM.from_backbone(tiny_model_dir, config))
    adapter.save_pretrained(tmp_path / "a", adapter=True)
    run = lambda source, out: subprocess.run(  # noqa: E731
        [sys.executable, str(script), str(source), "--out", str(out), "--center", "--samples", "1", "--length", "256"],
        capture_output=True, text=True)
    result = run(tmp_path / "a", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert "constant share" in result.stdout
    a, b = (CometForCausalLM.from_pretrained(tmp_path / name).eval() for name in ("a", "b"))
    assert b.comet_config.gate_centered and not a.comet_config.gate_centered
    assert all(bool(layer.global_memory.gate_center.abs().sum() > 0) for layer in b.memory.layers)
    ids = torch.randint(0, a.backbone.vocab_size, (1, 200), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        for x, y in zip(a.ingest(ids).layers, b.ingest(ids).layers):
            torch.testing.assert_close(y.global_state, x.global_state, atol=1e-4, rtol=1e-4)
    again = run(tmp_path / "b", tmp_path / "c")
    assert again.returncode == 2 and "centred already" in again.stderr and not (tmp_path / "c").exists()


def test_the_general_recipe_takes_only_options_that_do_not_change_what_it_trains(tmp_path):
    """EXTRA reaches every phase last, so a --batch-size there would override a phase's own, and a sitting that
    passed one would make g10x read other batches than g10c; such options are refused before anything runs."""
    env = {**os.environ, "COMETLM": "echo", "PYTHON": "echo", "RULE": "echo", "RULES": str(tmp_path / "rules")}
    for extra in (["--batch-size", "8"], ["--grad-accum=4"], ["--threads", "1", "--seed", "3"]):
        result = subprocess.run(["bash", str(GENERAL), str(tmp_path), "--", *extra], capture_output=True, text=True,
                                env=env)
        option = next(e for e in extra if e.startswith("--") and not e.startswith("--threads")).partition("=")[0]
        assert result.returncode == 2 and f"{option} changes what a phase trains" in result.stderr, extra
        assert result.stdout == "" and not (tmp_path / "general-g1").exists()
    result = subprocess.run(["bash", str(GENERAL), str(tmp_path), "--", "--threads", "2", "--dist-timeout=600",
                             "--gradient-checkpointing"], capture_output=True, text=True, env=env)
    assert result.returncode == 3 and "--dist-timeout=600 --gradient-checkpointing" in result.stdout

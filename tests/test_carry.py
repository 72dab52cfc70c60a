"""docs/experiments/carry.py: what a session carries in git is what the next one needs to resume the recipe."""

import importlib.util
from pathlib import Path

CARRY = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "carry.py"


def load_carry():
    spec = importlib.util.spec_from_file_location("carry", CARRY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished(run: Path, phase: str):
    final = run / phase / "final"
    final.mkdir(parents=True)
    (final / "comet_config.json").write_text("{}")
    (final / "comet.safetensors").write_text(f"{phase}'s weights")
    (run / phase / "metrics.jsonl").write_text('{"step": 1}\n')


def test_the_general_run_keeps_the_models_both_arms_and_the_next_phase_start_from(tmp_path):
    carry = load_carry()
    run, out = tmp_path / "runs" / "general", tmp_path / "carry"
    for phase in ("general-g9m", "general-g10", "general-g10c"):
        finished(run, phase)
    (run / "general-g10c-start").mkdir()  # the centred copy g10c started from: not needed once g10c is done
    (run / "general-g10x" / "checkpoint-20").mkdir(parents=True)  # the control arm in progress
    (run / "general-g10x" / "checkpoint-20" / "trainable.safetensors").write_text("step 20")
    (run / "general-g10x" / "latest").write_text("checkpoint-20\n")
    said = carry.save_training(run, out, carry.GENERAL_PHASES, models=2)
    assert said == ["general-g9m: done", "general-g10: done, model kept", "general-g10c: done, model kept",
                    "general-g10x: in progress, checkpoint-20 kept"]
    # g10x resumes from its checkpoint (g10's model its --comet), g11c starts from g10c's
    assert (out / "general-g10" / "final" / "comet.safetensors").read_text() == "general-g10's weights"
    assert (out / "general-g10c" / "final" / "comet.safetensors").is_file()
    assert sorted(p.name for p in (out / "general-g9m" / "final").iterdir()) == ["comet_config.json"]
    assert (out / "general-g10x" / "checkpoint-20" / "trainable.safetensors").read_text() == "step 20"
    assert not (out / "general-g10c-start").exists()
    # the default keeps the last finished phase's model alone (the passkey recipe's ablations)
    said = carry.save_training(run, out, carry.GENERAL_PHASES)
    assert said[:3] == ["general-g9m: done", "general-g10: done", "general-g10c: done, model kept"]
    assert not (out / "general-g10" / "final" / "comet.safetensors").exists()


def test_an_interrupted_save_or_restore_leaves_nothing_half_copied(tmp_path, monkeypatch):
    """A save that fails half-way (a kill, a checkpoint pruned while it is copied) used to have deleted the last good
    carry first; a restore killed mid-file left a truncated file that a rerun skipped as copied."""
    import shutil

    import pytest

    carry = load_carry()
    run, out = tmp_path / "runs" / "general", tmp_path / "carry"
    for phase in ("general-g10", "general-g10c"):
        finished(run, phase)
    carry.save_training(run, out, carry.GENERAL_PHASES, models=2)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    finished(run, "general-g10x")
    real = shutil.copytree

    def dies_on_g10x(source, target, *args, **kwargs):
        if "general-g10x" in str(source):
            raise KeyboardInterrupt
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", dies_on_g10x)
    with pytest.raises(KeyboardInterrupt):
        carry.save_training(run, out, carry.GENERAL_PHASES, models=2)
    monkeypatch.setattr(shutil, "copytree", real)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # the last complete carry, as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carry", "runs"]  # and nothing half-built beside it
    said = carry.save_training(run, out, carry.GENERAL_PHASES, models=2)  # a rerun completes it, nothing left over
    assert said[-1] == "general-g10x: done, model kept" and sorted(p.name for p in tmp_path.iterdir()) == [
        "carry", "runs"]

    restored = tmp_path / "restored"

    def dies_mid_file(source, target, *args, **kwargs):
        Path(target).write_text("trunc")
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copy2", dies_mid_file)
    with pytest.raises(KeyboardInterrupt):
        carry.copy_missing(out, restored)
    monkeypatch.undo()
    assert not [p for p in restored.rglob("*") if p.is_file() and not p.name.endswith(".partial")]
    assert carry.copy_missing(out, restored) == len([p for p in out.rglob("*") if p.is_file()])
    assert (restored / "general-g10x" / "final" / "comet.safetensors").read_text() == "general-g10x's weights"

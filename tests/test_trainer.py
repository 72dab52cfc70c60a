"""Training: exact resume, accumulation equals a big batch, LoRA trains only what it should, interruptions lose
nothing, the outputs reload, Hugging Face Trainer works on the model, and a tiny task is learned."""

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from cometlm import CometForCausalLM
from cometlm.training.chunking import ChunkPlanner
from cometlm.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from cometlm.lora import apply_lora, load_lora_state_dict
from cometlm.saving import LORA_FILE
from cometlm.cli.train import register
from cometlm.training.config import TrainConfig
from cometlm.training.loop import prepare_model, train
from cometlm.training.metrics import read_metrics
from cometlm.training.optimizer import build_optimizer
from cometlm.training.specs import load_dataset
from conftest import COMMON, SMALL, VOCAB, randomize_memory, tiny_backbone


@dataclass(frozen=True)
class Sample:
    input_ids: list
    labels: list
    boundaries: tuple = ()


def make_data(n=6, seed=0):
    """Samples of 13..20 tokens (so batches pad and chunk counts differ), every token a target."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (13 + (i * 3) % 8,), generator=generator).tolist()
        samples.append(Sample(ids, ids, boundaries=(5, 11)))
    return samples


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A saved tiny backbone: adapters record the directory of their base model."""
    path = tmp_path_factory.mktemp("base") / "llama"
    tiny_backbone().save_pretrained(path)
    return str(path)


def comet(base):
    torch.manual_seed(0)  # CoMeT's adapters and gates are initialised from the global RNG
    return randomize_memory(CometForCausalLM.from_backbone(base, SMALL))


def config(tmp_path, name, **overrides):
    settings = dict(max_steps=5, batch_size=1, grad_accum=2, lr=1e-2, warmup_steps=1, log_every=1, save_every=100)
    return TrainConfig(output_dir=str(tmp_path / name), **{**settings, **overrides})


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_run(a, b, dir_a, dir_b):
    """Same trainable tensors, and the same optimizer and scheduler state in the final checkpoints, bit for bit."""
    ta, tb = trainable(a), trainable(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    for file in ("optimizer.pt", "scheduler.pt"):
        sa = torch.load(dir_a / "checkpoint-5" / file, weights_only=True)
        sb = torch.load(dir_b / "checkpoint-5" / file, weights_only=True)
        assert_nested_equal(sa, sb)


def assert_nested_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_nested_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_nested_equal(x, y)
    else:
        assert a == b


# --------------------------------------------------------------------------------------------------------------
# Resume and interruption


AUGMENT = dict(p_fixed=1, p_right_aligned=1, p_uniform=1, p_random=1, p_boundary=1)


@pytest.mark.parametrize("stop", ["extend", "crash"])
def test_resume_equals_a_run_that_never_stopped(tmp_path, base, stop, monkeypatch):
    """"extend": a finished 3-step run continued to 5 (constant lr, since max_steps shapes the cosine schedule).
    "crash": a 5-step run killed after its step-3 checkpoint, or with ``latest`` still naming it; LoRA dropout makes
    the torch RNG matter, and the metrics written past step 3 must not be duplicated. Both draw chunk plans."""
    plans = []
    plan_batch = ChunkPlanner.plan_batch
    monkeypatch.setattr(ChunkPlanner, "plan_batch", lambda *args: plans.append(plan_batch(*args)) or plans[-1])
    extra = dict(min_lr_ratio=1.0, warmup_steps=0) if stop == "extend" else dict(lora_dropout=0.1, save_every=3)
    extra["chunk_augmentation"] = AUGMENT
    data = make_data()
    straight = comet(base)
    train(straight, data, config(tmp_path, "straight", **extra))
    straight_plans, plans[:] = list(plans), []
    assert any(not torch.equal(plan[0, :-1], torch.full_like(plan[0, :-1], 8)) for plan in straight_plans)

    settings = config(tmp_path, "resumed", **extra)
    if stop == "extend":
        train(comet(base), data, config(tmp_path, "resumed", **{**extra, "max_steps": 3}))
    else:
        train(comet(base), data, settings)
        out = tmp_path / "resumed"
        (out / "latest").write_text("checkpoint-3\n")
        with open(out / "metrics.jsonl", "a") as f:
            f.write('{"step": 6, "lo')  # torn by the kill
    plans[:] = []
    resumed = comet(base)
    with pytest.warns(UserWarning, match="max_steps") if stop == "extend" else nullcontext():
        result = train(resumed, data, settings)
    assert result.steps == 5
    assert len(plans) == 4 and all(torch.equal(a, b) for a, b in zip(plans, straight_plans[-4:]))  # steps 4, 5
    assert_same_run(straight, resumed, tmp_path / "straight", tmp_path / "resumed")
    assert [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_run_stopped_early_continues_the_same_schedule(tmp_path, base):
    """stop_at ends a run mid-schedule with its model exported; continuing it to max_steps equals never stopping
    (two samples a micro-batch, their chunk plans aligned and grouped by length)."""
    augment = {**AUGMENT, "aligned": 1}
    data, extra = make_data(), dict(save_every=2, chunk_augmentation=augment, batch_size=2, group_by_length=True)
    straight = comet(base)
    train(straight, data, config(tmp_path, "straight", **extra))
    stopped = comet(base)
    result = train(stopped, data, config(tmp_path, "resumed", stop_at=3, **extra))
    assert result.steps == 3 and (tmp_path / "resumed" / "final" / "comet_config.json").is_file()
    assert [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")] == [1, 2, 3]
    resumed = comet(base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropping stop_at is not a change of settings worth a warning
        assert train(resumed, data, config(tmp_path, "resumed", **extra)).steps == 5
    assert_same_run(straight, resumed, tmp_path / "straight", tmp_path / "resumed")
    with pytest.raises(ValueError, match="holds step 5, past stop_at=3"):
        train(comet(base), data, config(tmp_path, "resumed", stop_at=3, **extra))


class InterruptingData(list):
    """Raises the interrupt the first time sample ``at`` is read, as Ctrl-C or SIGTERM would mid-step."""

    def __init__(self, samples, at, how):
        super().__init__(samples)
        self.at, self.how, self.fired = at, how, False

    def __getitem__(self, index):
        if index == self.at and not self.fired:
            self.fired = True
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return super().__getitem__(index)


@pytest.mark.parametrize("how", ["keyboard", "sigterm", "sigterm_during_update"])
def test_interrupted_run_saves_and_resumes_exactly(tmp_path, base, how):
    data = make_data()
    settings = dict(batch_size=1, grad_accum=1)
    straight = comet(base)
    train(straight, data, config(tmp_path, "straight", **settings))

    interrupted = config(tmp_path, "interrupted", **settings)
    handler, hook = signal.getsignal(signal.SIGTERM), None
    if how == "sigterm_during_update":  # arrives while parameters change: held until the step is complete
        steps = []
        hook = register_optimizer_step_post_hook(
            lambda *_: steps.append(1) or (len(steps) == 3 and os.kill(os.getpid(), signal.SIGTERM))
        )
        source = data
    else:
        source = InterruptingData(data, at=3, how=how)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(comet(base), source, interrupted)
    finally:
        if hook is not None:
            hook.remove()
    out = tmp_path / "interrupted"
    assert (out / "latest").read_text().strip() == "checkpoint-3"
    assert load_checkpoint(out / "checkpoint-3", comet_with_lora(base)).data_position == 3
    assert signal.getsignal(signal.SIGTERM) == handler  # the trainer's handlers are gone again

    resumed = comet(base)
    assert train(resumed, data, interrupted).steps == 5
    assert_same_run(straight, resumed, tmp_path / "straight", out)
    # every step logged once, the interrupted one included (a signal in the update once lost its line)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_second_signal_while_the_interrupted_step_is_saved_waits_for_the_checkpoint(tmp_path, base, monkeypatch):
    """Ctrl-C writes a checkpoint before stopping; a second Ctrl-C (or SIGTERM) during that save used to stop it,
    losing every step since the last periodic checkpoint."""
    from cometlm.training import checkpoint as checkpoints

    real, calls = checkpoints.save_checkpoint, []

    def impatient(*args, **kwargs):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the emergency checkpoint is written
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_checkpoint", impatient)
    interrupted = config(tmp_path, "interrupted", batch_size=1, grad_accum=1, save_every=100)
    with pytest.raises(KeyboardInterrupt):
        train(comet(base), InterruptingData(make_data(), at=3, how="keyboard"), interrupted)
    assert len(calls) == 1
    out = tmp_path / "interrupted"
    assert (out / "latest").read_text().strip() == "checkpoint-3"
    assert load_checkpoint(out / "checkpoint-3", comet_with_lora(base)).data_position == 3


def test_starting_afresh_never_leaves_the_old_runs_checkpoints_beside_its_own_metrics(tmp_path, base):
    """``--no-resume`` emptied the old run's metrics at once but kept its checkpoints and final model until they were
    replaced, so a crash before the new run's first checkpoint was resumed as the old run, with the new run's
    metrics. The old run's checkpoints and model now go first: a rerun after that crash starts afresh."""
    data = make_data()
    out = tmp_path / "run"
    train(comet(base), data, config(tmp_path, "run", batch_size=1, grad_accum=1, save_every=2))
    assert (out / "latest").is_file() and (out / "final").is_dir()

    class Crashing(torch.utils.data.Dataset):  # the process dies at step 2 (no emergency checkpoint, as a kill)
        def __len__(self):
            return len(data)

        def __getitem__(self, index):
            if index == 1:
                raise RuntimeError("killed")
            return data[index]

    with pytest.raises(RuntimeError, match="killed"):
        train(comet(base), Crashing(), config(tmp_path, "run", batch_size=1, grad_accum=1, save_every=5, lr=1e-3),
              resume=False)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1]  # the new run's
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*")) and not (out / "latest").exists()
    rerun = train(comet(base), data, config(tmp_path, "run", batch_size=1, grad_accum=1, save_every=5, lr=1e-3))
    assert rerun.steps == 5 and [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert load_checkpoint(out / "checkpoint-5", comet_with_lora(base)).config["lr"] == 1e-3


def test_a_resume_with_another_number_of_data_replicas_says_so(tmp_path, base):
    """Each step reads batch_size x grad_accum samples per data replica, so resuming a run of two replicas in one
    process halves the samples per step: allowed (the machines at hand change), never silent."""
    data = make_data()
    train(comet(base), data, config(tmp_path, "run", max_steps=3, stop_at=2))
    state = tmp_path / "run" / "checkpoint-2" / "state.json"
    saved = json.loads(state.read_text())
    assert saved["extra"]["data_replicas"] == 1
    saved["extra"]["data_replicas"] = 2  # as a two-replica torchrun job writes it
    state.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="1 data replica.*the checkpoint had 2: each step now reads 2 samples "
                                         "instead of 4"):
        train(comet(base), data, config(tmp_path, "run", max_steps=3, stop_at=2))



def comet_with_lora(base):
    model = comet(base)
    prepare_model(model, TrainConfig(output_dir="unused"))
    return model


def test_training_on_an_adapter_keeps_its_lora_and_refuses_other_settings(tmp_path, base):
    """A model that has LoRA trains with it; LoRA settings other than its own are refused (they would be recorded
    in the run while another LoRA trains), before anything is written."""
    model = comet(base)
    apply_lora(model, rank=4, alpha=8, targets=("q_proj",))
    for changed, said in (({}, "rank 4 (asked: 8)"), ({"lora_rank": 4, "lora_alpha": 8}, "targets ['q_proj']")):
        with pytest.raises(ValueError, match=re.escape(said)):
            train(model, make_data(), config(tmp_path, "other", **changed))
    assert not (tmp_path / "other").exists()
    same = dict(lora_rank=4, lora_alpha=8, lora_targets=("q_proj",), max_steps=1)
    assert train(model, make_data(), config(tmp_path, "same", **same)).steps == 1


def test_checkpoints_are_pruned_and_damage_is_reported(tmp_path, base):
    out = tmp_path / "run"
    train(comet(base), make_data(), config(tmp_path, "run", save_every=1, keep_checkpoints=2))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-4", "checkpoint-5", "final", "latest", "loss.png", "metrics.jsonl"]
    ckpt = out / "checkpoint-5"
    # AdamW and LambdaLR states load without unpickling arbitrary objects.
    torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.load(ckpt / "scheduler.pt", weights_only=True)

    params = ckpt / "trainable.safetensors"
    data = params.read_bytes()
    params.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated: trainable.safetensors"):
        load_checkpoint(out, comet_with_lora(base))
    params.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="corrupted: trainable.safetensors fails its sha256"):
        load_checkpoint(out, comet_with_lora(base))
    saved = json.loads((ckpt / "state.json").read_text())
    for files in ({}, None, {**saved["files"], "trainable.safetensors": "whole"}):  # no file would be checked
        (ckpt / "state.json").write_text(json.dumps({**saved, "files": files}))
        with pytest.raises(CheckpointError, match="does not list its files"):
            load_checkpoint(out, comet_with_lora(base))
    (ckpt / "state.json").write_text('{"step": 5, "data_pos')
    with pytest.raises(CheckpointError, match="state.json is corrupted"):
        load_checkpoint(out, comet_with_lora(base))
    (ckpt / "state.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(ckpt, comet_with_lora(base))
    with pytest.raises(CheckpointError, match="other trainable parameters"):
        load_checkpoint(out / "checkpoint-4", comet(base))  # no LoRA: the parameter sets differ
    (out / "latest").write_text("")
    with pytest.raises(CheckpointError, match="names '', which is not a checkpoint folder"):
        train(comet(base), make_data(), config(tmp_path, "run", save_every=1))
    # a pointer may not lead out of its run's folder (into another run's checkpoint)
    (tmp_path / "other" / "checkpoint-9").mkdir(parents=True)
    (out / "latest").write_text("checkpoint-4/../../other/checkpoint-9")
    with pytest.raises(CheckpointError, match="not a checkpoint folder in"):
        latest_checkpoint(out)


# --------------------------------------------------------------------------------------------------------------
# What trains, and how


@pytest.mark.parametrize("weighting", ["token", "sample"])
def test_accumulation_equals_one_big_batch(tmp_path, base, weighting):
    """Rows of 13 and 16 tokens: only dividing by the window's target (or sample) count makes 2 x 1 equal 1 x 2."""
    data = make_data(n=2)
    big, accumulated = comet(base), comet(base)
    train(big, data, config(tmp_path, "big", max_steps=2, batch_size=2, grad_accum=1, loss_weighting=weighting))
    train(accumulated, data, config(tmp_path, "accumulated", max_steps=2, batch_size=1, grad_accum=2,
                                    loss_weighting=weighting))
    metrics = [read_metrics(tmp_path / run / "metrics.jsonl") for run in ("big", "accumulated")]
    for a, b in zip(*metrics):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    ta, tb = trainable(big), trainable(accumulated)
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("weighting", ["token", "sample"])
def test_grouping_by_length_is_the_same_step_with_less_padding(tmp_path, base, weighting):
    """Samples of 13-20 tokens, 4 a step in two micro-batches: sorted by length, each micro-batch pads to its own
    longest, yet every step's loss, gradient norm and per-dataset losses are those of reading order, and so are
    the trained tensors (no chunk augmentation, which draws per micro-batch)."""
    from cometlm.training.data import MixtureDataset
    from cometlm.training.loop import _micro_batches

    mix = MixtureDataset([make_data(6, seed=1), make_data(6, seed=2)], [1, 1], seed=3, size=40, names=["a", "b"])
    settings = dict(max_steps=3, batch_size=2, grad_accum=2, loss_weighting=weighting)
    runs = {}
    for grouped in (False, True):
        model = comet(base)
        result = train(model, mix, config(tmp_path, f"grouped-{grouped}", group_by_length=grouped, **settings))
        runs[grouped] = model, read_metrics(result.metrics)
    for plain, grouped in zip(runs[False][1], runs[True][1]):
        assert grouped["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert grouped["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
        assert grouped["targets_by_source"] == plain["targets_by_source"]
        assert grouped["loss_by_source"] == pytest.approx(plain["loss_by_source"], rel=1e-5)
    ta, tb = trainable(runs[False][0]), trainable(runs[True][0])
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], atol=1e-5, rtol=1e-4, msg=name)

    padded = {}
    for grouped in (False, True):
        settings = TrainConfig(output_dir="unused", batch_size=2, grad_accum=2, group_by_length=grouped)
        batches, position, read = _micro_batches(mix, 4, settings, 0)
        assert position == 8 and sorted(read) == [4, 5, 6, 7]
        rows = [list(b["attention_mask"].sum(dim=1)) for b in batches]
        assert [int(n) for r in rows for n in r] == [len(mix[i].input_ids) for i in read]
        padded[grouped] = sum(b["attention_mask"].numel() for b in batches)
    lengths = [len(mix[i].input_ids) for i in range(4, 8)]
    assert lengths != sorted(lengths) and len(set(lengths)) == 4  # so grouping has work to do
    assert padded[True] < padded[False]


def test_grouping_by_length_gives_each_data_replica_its_share_of_the_sorted_step():
    from cometlm.training.loop import _micro_batches

    data = make_data(8)  # lengths 13, 16, 19, 14, 17, 20, 15, 18
    settings = TrainConfig(output_dir="unused", batch_size=2, grad_accum=2, group_by_length=True)
    reads = [_micro_batches(data, 0, settings, 0, replica, 2)[2] for replica in range(2)]
    # the step's 8 samples by length: 0 (13) 3 (14) 6 (15) 1 (16) | 4 (17) 7 (18) 2 (19) 5 (20)
    assert reads == [[0, 3, 4, 7], [6, 1, 2, 5]]


def test_weighting_by_sample_gives_each_sample_its_mean_loss(tmp_path, base):
    """The first step's logged loss, weighted by sample, is the mean of its two samples' own mean losses (each
    scored alone by the untrained model); weighted by token it is their targets' mean, which differs here (the
    samples have 12 and 15 targets)."""
    data = make_data(n=2)
    reference = comet(base)
    with torch.no_grad():
        per_sample = [reference(torch.tensor([s.input_ids]), labels=torch.tensor([s.labels])) for s in data]
    means = [float(out.loss) for out in per_sample]
    sums = [float(out.row_losses[0]) for out in per_sample]
    targets = [len(s.input_ids) - 1 for s in data]
    logged = {}
    for weighting in ("token", "sample"):
        run = train(comet(base), data, config(tmp_path, weighting, max_steps=1, warmup_steps=0,
                                              loss_weighting=weighting))
        logged[weighting] = read_metrics(run.metrics)[0]["loss"]
    assert logged["sample"] == pytest.approx(sum(means) / 2, rel=1e-5)
    assert logged["token"] == pytest.approx(sum(sums) / sum(targets), rel=1e-5)
    assert abs(logged["sample"] - logged["token"]) > 1e-4


@pytest.mark.parametrize("mode", ["lora", "memory", "full"])
def test_each_mode_trains_exactly_its_parameters(tmp_path, base, mode):
    model = comet(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, make_data(), config(tmp_path, mode, mode=mode, max_steps=2, warmup_steps=0))
    after = dict(model.named_parameters())
    original = {n: n.replace(".base_layer", "") for n in after}  # LoRA moves a wrapped weight to base_layer
    changed = {n for n, p in after.items() if original[n] not in before or not torch.equal(before[original[n]], p)}
    memory = {n for n in after if n.startswith("memory.")}
    lora = {n for n in after if ".lora_" in n}
    assert memory <= changed  # every CoMeT parameter gets gradient and moves
    if mode == "lora":
        assert lora and {n for n in lora if ".lora_B." in n} <= changed  # lora_B starts at zero and moves
        assert changed <= memory | lora  # base weights untouched
    elif mode == "memory":
        assert not lora and changed == memory
    else:
        assert not lora and "backbone_model.model.layers.0.mlp.up_proj.weight" in changed


def test_gradient_checkpointing_changes_nothing_and_bf16_stays_close(tmp_path, base):
    plain, checkpointed, bf16 = comet(base), comet(base), comet(base)
    train(plain, make_data(), config(tmp_path, "plain", max_steps=2))
    train(checkpointed, make_data(), config(tmp_path, "checkpointed", max_steps=2, gradient_checkpointing=True))
    train(bf16, make_data(), config(tmp_path, "bf16", max_steps=2, bf16=True))
    ta, tb = trainable(plain), trainable(checkpointed)
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], atol=1e-6, rtol=1e-5, msg=name)
    losses = [read_metrics(tmp_path / run / "metrics.jsonl")[0]["loss"] for run in ("plain", "bf16")]
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


def test_memory_learns_at_five_times_the_rate_without_decay_on_vectors(base):
    model = comet(base)
    settings = TrainConfig(output_dir="unused", lr=1e-3, weight_decay=0.1)
    prepare_model(model, settings)
    optimizer, scheduler = build_optimizer(model, settings)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"memory", "memory_no_decay", "backbone"}  # LoRA has no vectors
    memory = {id(p) for p in model.memory.parameters()}
    for name, group in groups.items():
        assert group["lr"] == pytest.approx(5e-3 if name.startswith("memory") else 1e-3)
        assert all((id(p) in memory) == name.startswith("memory") for p in group["params"])
        assert all(p.dim() >= 2 for p in group["params"]) == (group["weight_decay"] == 0.1)
    trainable_ids = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable_ids == {id(p) for g in groups.values() for p in g["params"]}


def test_gate_weights_can_learn_slower_than_the_rest_of_the_memory(base):
    model = comet(base)
    settings = TrainConfig(output_dir="unused", lr=1e-3, weight_decay=0.1, gate_weight_lr_multiplier=0.01)
    prepare_model(model, settings)
    optimizer, _ = build_optimizer(model, settings)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"memory", "memory_no_decay", "memory_gate", "backbone"}
    gates = model.memory.gate_weights()
    assert len(gates) == model.backbone.num_layers
    assert {id(p) for p in groups["memory_gate"]["params"]} == {id(p) for p in gates}
    assert groups["memory_gate"]["lr"] == pytest.approx(5e-5) and groups["memory_gate"]["weight_decay"] == 0.1
    biases = {id(layer.global_memory.gate.bias) for layer in model.memory.layers}
    assert biases <= {id(p) for p in groups["memory_no_decay"]["params"]}  # the bias keeps the memory's rate
    assert groups["memory"]["lr"] == pytest.approx(5e-3)
    trainable_ids = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable_ids == {id(p) for g in groups.values() for p in g["params"]}


# --------------------------------------------------------------------------------------------------------------
# Outputs


def test_outputs_metrics_plot_and_a_reloadable_adapter(tmp_path, base):
    model = comet(base)
    result = train(model, make_data(), config(tmp_path, "run", log_every=2))
    assert [r["step"] for r in read_metrics(result.metrics)] == [2, 4, 5]  # every log_every steps, and the last
    fields = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens", "elapsed", "peak_rss_mib"}
    records = read_metrics(result.metrics)
    assert set(records[0]) == fields
    peaks = [r["peak_rss_mib"] for r in records]  # the process's peak so far: a model is loaded, and it never falls
    assert peaks[0] > 50 and peaks == sorted(peaks)
    assert result.loss_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = make_data()
    assert result.steps == 5 and result.tokens == sum(len(data[i % len(data)].input_ids) for i in range(5 * 2))

    model.eval()
    ids = torch.tensor([make_data()[5].input_ids])
    with torch.no_grad():
        expected = model(ids).logits
        meta = json.loads(result.final_dir.joinpath("comet_config.json").read_text())
        assert meta["kind"] == "adapter" and (result.final_dir / LORA_FILE).is_file()
        # from_pretrained loads the CoMeT weights onto the recorded base and applies the shipped LoRA.
        assert torch.equal(CometForCausalLM.from_pretrained(result.final_dir)(ids).logits, expected)


def test_a_model_without_a_base_path_is_refused_before_training(tmp_path):
    model = randomize_memory(CometForCausalLM.from_backbone(tiny_backbone(), SMALL))
    with pytest.raises(ValueError, match="must name its base model"):
        train(model, make_data(), config(tmp_path, "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(mode="adapter"), "mode must be one of lora, full, memory"),
        (dict(grad_accum=0), "grad_accum must be an int >= 1"),
        (dict(warmup_steps=9), "warmup_steps must be an int in 0..max_steps=5"),
        (dict(max_grad_norm=0), "max_grad_norm must be > 0, or None"),
        (dict(chunk_augmentation={"p_fixed": -1}), "chunk_augmentation must map ChunkPlanner options"),
        (dict(lora_targets=()), "lora_targets must name at least one"),
        (dict(stop_at=6), "stop_at must be an int in 1..max_steps=5"),
        (dict(loss_weighting="row"), "loss_weighting must be one of token, sample"),
        (dict(gate_weight_lr_multiplier=0), "gate_weight_lr_multiplier must be > 0"),
    ],
)
def test_bad_configs_say_what_to_fix(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, "run", **overrides)


# --------------------------------------------------------------------------------------------------------------
# Learning


def test_loss_goes_down_on_a_memorisation_task(tmp_path, base):
    """Two random sequences, seen 20 times: the whole model (mode "full") learns them (4.6 -> about 1.4)."""
    data = make_data(n=2)
    settings = config(tmp_path, "memorise", mode="full", max_steps=20, batch_size=2, grad_accum=1)
    losses = [r["loss"] for r in read_metrics(train(comet(base), data, settings).metrics)]
    assert losses[-1] < 0.5 * losses[0], losses


def hf_trainer(output_dir, max_steps: int, **arguments):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = randomize_memory(CometForCausalLM.from_backbone(tiny_backbone(), SMALL))
    rows = [{"input_ids": s.input_ids[:13], "labels": s.labels[:13]} for s in make_data(n=2)] * 4

    def collate(batch):
        return {k: torch.tensor([row[k] for row in batch]) for k in ("input_ids", "labels")}

    args = TrainingArguments(
        output_dir=str(output_dir), use_cpu=True, report_to=[], per_device_train_batch_size=2, max_steps=max_steps,
        learning_rate=1e-2, logging_steps=1, disable_tqdm=True, **{"save_strategy": "no", **arguments},
    )
    return Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)


def test_hugging_face_trainer_trains_the_model_without_special_code(tmp_path):
    trainer = hf_trainer(tmp_path, max_steps=8)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses


def test_hugging_face_trainer_checkpoints_and_resumes_exactly(tmp_path):
    """Trainer's own checkpoints (safetensors, the tied LM head stored once): 2 steps, then a new Trainer resumes
    from checkpoint-2 to step 4 and ends where 4 steps straight end."""
    straight = hf_trainer(tmp_path / "straight", max_steps=4)
    straight.train()
    hf_trainer(tmp_path / "stopped", max_steps=4, save_strategy="steps", save_steps=2).train()
    saved = load_file(tmp_path / "stopped" / "checkpoint-2" / "model.safetensors")
    assert not any(name.endswith("lm_head.weight") for name in saved) and any("embed_tokens" in n for n in saved)
    hf_trainer(tmp_path / "fresh", max_steps=1).model.load_state_dict(saved, strict=True)  # the head comes back
    resumed = hf_trainer(tmp_path / "stopped", max_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "stopped" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert resumed.model.backbone_model.lm_head.weight is resumed.model.backbone.embed_tokens.weight


# --------------------------------------------------------------------------------------------------------------
# Command line


def train_parser():
    parser = argparse.ArgumentParser(prog="cometlm")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_train_help_is_fast_and_covers_every_setting():
    code = ("import argparse; from cometlm.cli.train import register; p = argparse.ArgumentParser(); "
            "register(p.add_subparsers()); p.parse_args(['train', '--help'])")
    command = [sys.executable, "-X", "importtime", "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "transformers" not in imported and "peft" not in imported
    assert all(form in " ".join(result.stdout.split()) for form in ("jsonl-chat:PATH", "lm:essays", "passkey"))
    actions = train_parser()._subparsers._group_actions[0].choices["train"]._actions
    assert {a.dest for a in actions} >= {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(a.help for a in actions if a.option_strings and a.dest != "help")


def test_unknown_data_spec_lists_the_forms():
    with pytest.raises(ValueError, match=r"'jsonl:x' is not a data source; use one of:\n  jsonl-text:PATH"):
        load_dataset("jsonl:x", tokenizer=None, max_length=64)


def test_train_command_trains_resumes_and_continues_from_its_output(tmp_path, capsys, tiny_model_dir):
    """A JSONL file with one bad line: two steps, then one more on rerun, then a new run that starts from the first
    run's final model (its LoRA included)."""
    data = tmp_path / "texts.jsonl"
    line = json.dumps({"text": "The pass key is 12345. Remember it. 12345 is the pass key. " * 3})
    data.write_text(f"{line}\nnot json\n{line}\n")
    run = tmp_path / "run"
    common = ["train", "--data", f"jsonl-text:{data}", "--model", tiny_model_dir, "--max-length", "40",
              "--lora-rank", "2", "--chunk-augmentation", "p_fixed=1", "p_random=1"]
    sizes = ["--chunk-size", "16", "--global-slots", "2", "--temp-capacity", "4"]  # an adapter brings its own
    parser = train_parser()
    args = parser.parse_args([*common, *sizes, "--output-dir", str(run), "--max-steps", "2"])
    assert args.run(args) == 0
    args = parser.parse_args([*common, *sizes, "--output-dir", str(run), "--max-steps", "3"])
    with pytest.warns(UserWarning, match="differ from the checkpoint's: max_steps"):
        assert args.run(args) == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad records" in err and "texts.jsonl:2" in err
    assert "resuming from" in err and "trained 3 steps" in err
    assert (run / "final" / LORA_FILE).is_file()

    args = parser.parse_args([*common, "--output-dir", str(tmp_path / "more"), "--max-steps", "1",
                              "--comet", str(run / "final")])
    assert args.run(args) == 0
    before = load_file(run / "final" / LORA_FILE)
    after = load_file(tmp_path / "more" / "final" / LORA_FILE)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_a_mixture_logs_the_datasets_of_each_step_and_plots_them_apart(tmp_path, base):
    from matplotlib.image import imread

    from cometlm.training.data import MixtureDataset

    short, long = make_data(4, seed=1), make_data(4, seed=2)
    mix = MixtureDataset([short, long], [1, 1], seed=3, size=1000, names=["short", "long"])
    assert [mix.source_of(i) for i in range(40)] == [["short", "long"][mix.component(i)[0]] for i in range(40)]
    result = train(comet(base), mix, config(tmp_path, "each", max_steps=60, lr=1e-3))  # grad_accum 2: 2 samples
    steps = read_metrics(result.metrics)
    drawn = [sorted({mix.source_of(2 * s), mix.source_of(2 * s + 1)}) for s in range(60)]
    assert [r["sources"] for r in steps] == drawn
    assert {len(r["sources"]) for r in steps} == {1, 2}  # steps of one dataset and mixed steps
    for r in steps:  # every step, mixed or not, has each dataset's loss per target, and together they are its loss
        assert sorted(r["loss_by_source"]) == sorted(r["targets_by_source"]) == r["sources"]
        n = sum(r["targets_by_source"].values())
        assert sum(r["loss_by_source"][k] * r["targets_by_source"][k] for k in r["sources"]) / n == pytest.approx(
            r["loss"], rel=1e-5)
        counts = {}  # each sample's targets: every token but the first (make_data)
        for i in range(2 * r["step"] - 2, 2 * r["step"]):
            counts[mix.source_of(i)] = counts.get(mix.source_of(i), 0) + len(mix[i].input_ids) - 1
        assert r["targets_by_source"] == counts
    assert {len(r["loss_by_source"]) for r in steps} == {1, 2}
    assert imread(result.loss_plot).shape[1] == 800

    # Logged every 4 steps: each dataset's loss is its summed loss over the window's targets from it.
    windows = read_metrics(train(comet(base), mix, config(tmp_path, "every4", max_steps=60, lr=1e-3,
                                                          log_every=4)).metrics)
    for record in windows:
        window = [r for r in steps if record["step"] - 4 < r["step"] <= record["step"]]
        assert record["sources"] == sorted({s for r in window for s in r["sources"]})
        for name in record["sources"]:
            nats = sum(r["loss_by_source"][name] * r["targets_by_source"][name] for r in window if name in r["sources"])
            targets = sum(r["targets_by_source"][name] for r in window if name in r["sources"])
            assert record["targets_by_source"][name] == targets
            assert record["loss_by_source"][name] == pytest.approx(nats / targets, rel=1e-5)

    assert "sources" not in read_metrics(train(comet(base), make_data(), config(tmp_path, "plain")).metrics)[0]
    with pytest.raises(ValueError, match="one name per dataset"):
        MixtureDataset([short, long], [1, 1], names=["short"])


def test_the_logged_sources_are_the_samples_every_data_replica_reads():
    from cometlm.training.loop import _micro_batches, _sources

    class Recording:
        """Samples named by their index; remembers which indices were read."""

        def __init__(self):
            self.samples, self.read = make_data(), set()

        def __len__(self):
            return 50

        def __getitem__(self, i):
            self.read.add(i)
            return self.samples[i % len(self.samples)]

        def source_of(self, i):
            return f"sample {i}"

    settings = TrainConfig(output_dir="unused", batch_size=2, grad_accum=3)
    for position in (0, 44):  # from the start, and wrapping around the end
        data = Recording()
        for replica in range(2):
            _micro_batches(data, position, settings, 0, replica, 2)
        assert _sources(data, position, settings, replicas=2) == {f"sample {i}" for i in data.read}
        assert len(data.read) == 2 * 3 * 2


def test_data_specs_mix_with_weights(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from cometlm.training.data import MixtureDataset
    from cometlm.training.specs import load_mixture

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    files = []
    for name, text in (("a", "alpha beta gamma"), ("b", "one two three four")):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text(json.dumps({"text": text}) + "\n")
    single = load_mixture([f"jsonl-text:{files[0]}"], tokenizer, 32)
    assert not isinstance(single, MixtureDataset)
    mix = load_mixture([f"jsonl-text:{files[0]}@3", f"jsonl-text:{files[1]}"], tokenizer, 32)
    assert isinstance(mix, MixtureDataset) and mix.weights == [0.75, 0.25]
    assert mix.names == [f"jsonl-text:{files[0]}", f"jsonl-text:{files[1]}"]  # the specs, without the weights
    drawn = {tuple(mix[i].input_ids) for i in range(40)}
    assert drawn == {tuple(single[0].input_ids), tuple(load_mixture([f"jsonl-text:{files[1]}"], tokenizer, 32)[0].input_ids)}
    with pytest.raises(ValueError, match="weight after '@' must be a number"):
        load_mixture([f"jsonl-text:{files[0]}@lots"], tokenizer, 32)


def test_passkey_spec_draws_depths_from_its_range(tokenizer):
    for spec, (low, high) in (("passkey:depth=0-20", (0.0, 0.45)), ("passkey:depth=80-100", (0.55, 1.0))):
        dataset = load_dataset(spec, tokenizer, 512)
        for i in range(4):
            text = tokenizer.decode(dataset[i].input_ids)
            where = text.index("The pass key is") / len(text)
            assert low <= where <= high, (spec, where)
    assert load_dataset("passkey", tokenizer, 512).depth_range == (0.0, 1.0)
    for bad in ("passkey:depth=50-10", "passkey:depth=0-200", "passkey:deep=0-50", "passkey:depth=a-b"):
        with pytest.raises(ValueError, match="depth"):
            load_dataset(bad, tokenizer, 512)


def test_passkey_spec_draws_key_lengths_from_its_range_and_combines_options(tokenizer):
    import re

    dataset = load_dataset("passkey:depth=0-20,digits=4-7", tokenizer, 512)
    keys = [re.search(r"The pass key is (\d+)\.", tokenizer.decode(dataset[i].input_ids)).group(1) for i in range(40)]
    assert {len(k) for k in keys} == {4, 5, 6, 7} and dataset.depth_range == (0.0, 0.2)
    for i in range(3):  # the target is the key and the period after it, whatever its length
        sample = dataset[i]
        target = tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels) if label != -100])
        assert re.fullmatch(r" ?\d{4,7}\.", target), target
    seven = load_dataset("passkey:digits=7", tokenizer, 512)
    assert max(len(seven[i].input_ids) for i in range(10)) <= 512
    # The default draws nothing more, so recipes written before the option replay the same samples.
    assert load_dataset("passkey:digits=5", tokenizer, 512)[3] == load_dataset("passkey", tokenizer, 512)[3]
    for bad in ("passkey:digits=7-5", "passkey:digits=0", "passkey:digits=x", "needle:digits=5",
                "passkey:depth=0-50,depth=0-20"):
        with pytest.raises(ValueError, match="digits|options are"):
            load_dataset(bad, tokenizer, 512)


def test_passkey_without_the_period_reads_the_same_prompts_with_the_key_alone_as_target(tokenizer):
    """`passkey:period=0` replays the shipped adapter's first phases, trained before the period was in the target:
    the same prompts, the target one token shorter."""
    with_period, without = (load_dataset(spec, tokenizer, 512) for spec in ("passkey", "passkey:period=0"))
    for i in range(5):
        a, b = with_period[i], without[i]
        assert a.input_ids[:-1] == b.input_ids and a.labels[:-1] == b.labels
        target = tokenizer.decode([t for t, label in zip(b.input_ids, b.labels) if label != -100])
        assert target.strip().isdigit() and tokenizer.decode(a.input_ids[-1:]) == "."
    assert load_dataset("passkey:period=1", tokenizer, 512)[2] == with_period[2]
    for bad in ("passkey:period=2", "passkey:period=", "needle:period=0"):
        with pytest.raises(ValueError, match="period=0 or 1|options are"):
            load_dataset(bad, tokenizer, 512)


def test_a_resume_with_other_weights_data_or_rates_is_refused_before_anything_changes(tmp_path, base):
    """Checkpoints record what the model and the data were; a rerun that differs in either, or in what the
    checkpoint's optimizer fixes (rates, decay, LoRA), is refused and leaves the model as it was. A checkpoint
    written before the record existed still resumes."""
    data = {"data": ["passkey@1"], "max_length": 40, "on_error": "raise"}
    out = tmp_path / "run"
    train(comet(base), make_data(), config(tmp_path, "run", max_steps=2, save_every=1), data=data)
    state = json.loads((out / "checkpoint-2" / "state.json").read_text())
    assert state["run"]["data"] == data and set(state["run"]["model"]) == {"comet", "base", "dtype", "fixed"}

    def refused(model, error, match, given=data, **changes):
        before = {name: p.detach().clone() for name, p in model.memory.named_parameters()}
        with pytest.raises(error, match=match):
            train(model, make_data(), config(tmp_path, "run", max_steps=3, **changes), data=given)
        assert all(torch.equal(p, before[name]) for name, p in model.memory.named_parameters())  # not restored

    refused(comet(base), CheckpointError, "another data", given={**data, "max_length": 60})
    other = CometForCausalLM.from_backbone(base, dataclasses.replace(SMALL, chunk_size=SMALL.chunk_size * 2))
    torch.manual_seed(0)
    refused(randomize_memory(other), CheckpointError, "another model")  # the same shapes, another chunk size
    centred = comet(base)
    for layer in centred.memory.layers:  # a buffer the checkpoint does not hold, as a centred gate's centre
        layer.register_buffer("probe", torch.ones(3))
    refused(centred, CheckpointError, "another model")
    refused(comet(base), ValueError, "lr 0.01 there, 0.02 now", lr=2e-2)
    refused(comet(base), ValueError, "lora_rank", lora_rank=2)

    # a checkpoint without the record (written before it existed) resumes as before
    del state["run"]
    (out / "checkpoint-2" / "state.json").write_text(json.dumps(state))
    with pytest.warns(UserWarning, match="max_steps"):  # more steps: allowed, and said
        assert train(comet(base), make_data(), config(tmp_path, "run", max_steps=3), data=data).steps == 3

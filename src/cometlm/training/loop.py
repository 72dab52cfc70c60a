"""Fine-tuning CoMeT (METHOD.md section 3): a small training loop that is deterministic and resumes exactly.

Data order is a pure function of the position in the data: micro-batch ``a`` of step ``s`` reads samples
``[(s*grad_accum + a)*batch_size, ...)`` modulo the dataset length (with ``group_by_length``, the step's samples
sorted by length and then cut into micro-batches), and chunk augmentation draws from a generator
seeded by ``(seed, step, micro-batch)``. Together with the checkpointed parameters, optimizer, scheduler and RNG
states, a run that is stopped and resumed ends with exactly the tensors of a run that never stopped.

The loss of each micro-batch is divided by the number of target tokens in the whole accumulation window
(``num_items_in_batch``), so ``grad_accum`` micro-batches equal one batch of their combined size. Weighted by
sample (``TrainConfig.loss_weighting``), each row's loss is divided by its own targets times the window's samples.

"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import FINAL_DIR, LOSS_PLOT_FILE, METRICS_FILE, TrainConfig
from .metrics import TrainingLog, plot_loss_curve
from .optimizer import build_optimizer, clip_gradients, lr_factor


@dataclass
class TrainResult:
    """What a run produced. ``tokens`` and ``wall_seconds`` count every run of a resumed training."""

    steps: int
    final_loss: float | None
    tokens: int
    wall_seconds: float
    output_dir: Path
    final_dir: Path
    checkpoint: Path
    metrics: Path
    loss_plot: Path


@dataclass(frozen=True)
class Progress:
    """Where a run stands after ``step`` complete optimizer steps: what a checkpoint records besides tensors."""

    step: int
    position: int  # samples consumed so far (not wrapped), so the next micro-batch starts at position % len(data)
    tokens: int
    elapsed: float  # training seconds over all runs so far
    loss: float | None
    rng: dict


def train(model, dataset, config: TrainConfig, resume: bool = True, parallel=None, data: dict | None = None
          ) -> TrainResult:
    """Trains ``model`` in place on ``dataset`` (random access: ``len(dataset)``, ``dataset[i]`` -> a Sample with
    ``input_ids``, ``labels`` and ``boundaries``) and exports it to ``output_dir/final``.

    With ``resume`` the run continues from the latest checkpoint in ``output_dir``. Ctrl-C or SIGTERM writes a
    checkpoint of the last complete step before the KeyboardInterrupt propagates, so rerunning loses nothing.
    Checkpoints record what the model is (``model_identity``) and ``data`` (JSON: what the dataset was made from, as
    the command line gives it); a resume with another of either is refused, as is one with learning rates, weight
    decay or LoRA settings other than the checkpoint's (its optimizer would keep the old ones).

    ``parallel`` (a ``cometlm.parallel.distributed.ContextParallel``) makes this process one rank of a pipeline x
    data-parallel job: each step runs the pipeline schedule and sums gradients over all ranks; only its main rank
    writes checkpoints, metrics, the plot and the final model (on the others ``checkpoint`` is None).
    """
    from .checkpoint import (capture_rng_state, latest_checkpoint, load_checkpoint, read_checkpoint_config,
                             start_afresh)

    if len(dataset) == 0:
        raise ValueError("the dataset is empty; give at least one sample")
    output = Path(config.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output_dir {output} is a file, not a folder")
    _check_exportable(model, config)
    planner = _chunk_planner(model, config)
    was_training = model.training
    _seed_everything(config.seed)
    prepare_model(model, config)
    optimizer, scheduler = build_optimizer(model, config)
    output.mkdir(parents=True, exist_ok=True)  # once the settings have proved sound: a refused run leaves nothing
    run = {"model": model_identity(model), **({"data": data} if data is not None else {})}

    writes = parallel is None or parallel.is_main
    if not resume and writes:  # the old run's checkpoints and model go before its metrics do (TrainingLog)
        start_afresh(output)
        shutil.rmtree(output / FINAL_DIR, ignore_errors=True)
    found = latest_checkpoint(output) if resume else None
    if found is None:
        progress = Progress(0, 0, 0, 0.0, None, capture_rng_state())
    else:
        _refuse_fixed_changes(read_checkpoint_config(found), config, found)
        info = load_checkpoint(found, model, optimizer, scheduler, run=run)
        if info.step > config.last_step:
            raise ValueError(f"{found} holds step {info.step}, past stop_at={config.stop_at}: the run cannot stop "
                             "there any more; use another output folder, or a later or no stop_at")
        _warn_about_changes(info.config, config)
        extra = info.extra
        replicas = _replicas(parallel)
        if extra.get("data_replicas", replicas) != replicas:  # older checkpoints did not record it
            per_replica = config.batch_size * config.grad_accum
            warnings.warn(f"resuming with {replicas} data replica(s) where the checkpoint had "
                          f"{extra['data_replicas']}: each step now reads {replicas * per_replica} samples instead "
                          f"of {extra['data_replicas'] * per_replica}", stacklevel=2)
        progress = Progress(info.step, info.data_position, extra["tokens"], extra["elapsed"], extra["loss"],
                            capture_rng_state())
        print(f"resuming from {info.path} (step {info.step})", file=sys.stderr)

    log = TrainingLog(config, progress.step) if writes else None
    try:
        progress, checkpoint = _run(model, dataset, config, optimizer, scheduler, planner, progress, log, found,
                                    parallel, run)
    finally:
        if log is not None:
            log.close()
    final_dir, plot = output / FINAL_DIR, output / LOSS_PLOT_FILE
    if writes:
        if checkpoint is None:
            checkpoint = _save(output, model, optimizer, scheduler, progress, config, run, _replicas(parallel))
        export_model(model, final_dir, config.mode)
        plot_loss_curve(output / METRICS_FILE, plot)
    model.train(was_training)
    return TrainResult(progress.step, progress.loss, progress.tokens, progress.elapsed, output, final_dir, checkpoint,
                       output / METRICS_FILE, plot)


def _run(model, dataset, config, optimizer, scheduler, planner, progress: Progress, log, checkpoint, parallel=None,
         run: dict | None = None):
    """The loop. Parameters, optimizer and scheduler only change inside ``signals.hold()``, together with
    ``progress``; so whenever an interrupt arrives, ``progress`` describes the tensors and can be checkpointed.

    ``checkpoint`` is the checkpoint of the current step, if one is on disk; returns the final progress and that.
    ``log`` is None on the ranks of a parallel job that do not write (see ``train``); ``run`` is recorded in each
    checkpoint (``save_checkpoint``).
    """
    from .checkpoint import capture_rng_state

    output = Path(config.output_dir)
    pad_id = _pad_id(model.config)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    started = time.perf_counter() - progress.elapsed
    with _StopSignals() as signals:
        try:
            while progress.step < config.last_step:
                step_start = time.perf_counter()
                if parallel is not None:  # each rank draws its own dropout: a function of (seed, step, rank), since
                    _seed_rank(config.seed, progress.step, parallel.rank)  # only rank 0 saves its RNG state
                replica, replicas = (0, 1) if parallel is None else (parallel.replica, parallel.replicas)
                batches, position, read = _micro_batches(dataset, progress.position, config, pad_id, replica,
                                                         replicas)
                sources = _sources(dataset, progress.position, config, replicas) if log is not None else None
                plans = [_plan(planner, b, config.seed, progress.step, micro * replicas + replica)
                         for micro, b in enumerate(batches)]
                loss, tokens, rows = _accumulate(model, batches, plans, config, parallel)
                by_source = _loss_by_source(dataset, read, rows) if log is not None else None
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss is {loss} at step {progress.step + 1}; lower lr, or resume from the last checkpoint"
                    )
                with signals.hold():  # the step and its metrics line, whole or not at all
                    grad_norm = clip_gradients(params, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    progress = Progress(progress.step + 1, position, progress.tokens + tokens,
                                        time.perf_counter() - started, loss, capture_rng_state())
                    checkpoint = None
                    if log is not None:
                        log.step(progress, lr_factor(progress.step - 1, config) * config.lr, grad_norm, tokens,
                                 time.perf_counter() - step_start, sources, by_source)
                if log is None:
                    continue
                if progress.step % config.save_every == 0:
                    checkpoint = _save(output, model, optimizer, scheduler, progress, config, run, _replicas(parallel))
        except KeyboardInterrupt:
            optimizer.zero_grad(set_to_none=True)
            if log is None:
                raise
            if checkpoint is None:  # a second Ctrl-C would lose every step since the last checkpoint: held
                print(f"\ninterrupted: saving step {progress.step} (further signals wait until it is written)",
                      file=sys.stderr)
                with signals.hold(discard=True):
                    checkpoint = _save(output, model, optimizer, scheduler, progress, config, run,
                                       _replicas(parallel))
            print(f"interrupted: {checkpoint} holds step {progress.step}; run again to resume", file=sys.stderr)
            raise
    return progress, checkpoint


def _replicas(parallel) -> int:
    """How many data replicas read each step (1 in one process)."""
    return 1 if parallel is None else parallel.replicas


def _save(output: Path, model, optimizer, scheduler, progress: Progress, config: TrainConfig,
          run: dict | None = None, replicas: int = 1) -> Path:
    from .checkpoint import save_checkpoint

    extra = {"tokens": progress.tokens, "elapsed": progress.elapsed, "loss": progress.loss, "data_replicas": replicas}
    return save_checkpoint(output, model, optimizer, scheduler, progress.step, progress.position, progress.rng,
                           extra=extra, config=config.to_dict(), keep=config.keep_checkpoints, run=run)


# Settings the checkpoint's optimizer and model hold (its param groups' rates and decay, its LoRA): a resume cannot
# change them, so one that asks to is refused rather than silently ignored.
FIXED_ON_RESUME = ("lr", "memory_lr_multiplier", "gate_weight_lr_multiplier", "weight_decay", "mode", "lora_rank",
                   "lora_alpha", "lora_dropout", "lora_targets")


def _refuse_fixed_changes(saved: dict, config: TrainConfig, found: Path) -> None:
    current = config.to_dict()
    changed = [k for k in FIXED_ON_RESUME if k in saved and _jsonable(current[k]) != saved[k]]
    if changed:
        was = ", ".join(f"{k} {saved[k]!r} there, {_jsonable(current[k])!r} now" for k in changed)
        raise ValueError(f"{found} was trained with other settings that a resume cannot change ({was}): rerun "
                         "with the checkpoint's, or train into another --output-dir from its model (--comet)")


def model_identity(model) -> dict:
    """What a run's checkpoints only fit (JSON): CoMeT's configuration, the base model's shape and fingerprint,
    its dtype, and a digest of what the model holds that training does not change or save (buffers such as a
    centred gate's centre, frozen LoRA), taken before training."""
    import hashlib

    digest = hashlib.sha256()
    fixed = [(name, t) for name, t in model.memory.named_buffers()]
    fixed += [(name, p) for name, p in model.named_parameters() if "lora_" in name and not p.requires_grad]
    for name, tensor in sorted(fixed, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return {"comet": model.comet_config.to_dict(), "base": model.backbone.describe(),
            "dtype": str(model.backbone.embed_tokens.weight.dtype), "fixed": digest.hexdigest()[:16]}


def _warn_about_changes(saved: dict, config: TrainConfig) -> None:
    """Resuming with other settings is allowed (e.g. more steps), but should never pass unnoticed."""
    # a moved folder changes nothing; stopping at another step does not change the steps taken
    current = {k: v for k, v in config.to_dict().items() if k not in ("output_dir", "stop_at")}
    changed = sorted(k for k, v in current.items() if k in saved and _jsonable(v) != saved[k])
    if changed:
        warnings.warn(f"resuming with settings that differ from the checkpoint's: {', '.join(changed)}", stacklevel=3)


def _jsonable(value):
    return json.loads(json.dumps(value))


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_model(model, config: TrainConfig):
    """Sets which parameters train for ``config.mode`` (adding LoRA if the model has none yet) and train mode. A
    model that has LoRA already (an adapter trained on) keeps it, so the config's LoRA settings must be the same."""
    from cometlm.lora import apply_lora, freeze_backbone, has_lora, lora_config

    if config.mode == "full":
        if has_lora(model):
            raise ValueError("mode 'full' trains the whole backbone, but the model has LoRA; use mode 'lora'")
        for p in model.backbone_model.parameters():
            p.requires_grad_(True)
    elif config.mode == "memory":
        freeze_backbone(model)
    elif not has_lora(model):
        apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
    else:
        have = lora_config(model)
        want = {"rank": config.lora_rank, "alpha": float(config.lora_alpha), "dropout": float(config.lora_dropout),
                "targets": sorted(config.lora_targets)}
        differ = [f"{name} {have[name]} (asked: {want[name]})" for name in have if have[name] != want[name]]
        if differ:
            raise ValueError(f"the model's LoRA has {', '.join(differ)}; training goes on with the model's LoRA, so "
                             "give its settings (--lora-rank, --lora-alpha, --lora-dropout, --lora-targets)")
    for p in model.memory.parameters():
        p.requires_grad_(True)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()



def _micro_batches(dataset, position: int, config: TrainConfig, pad_id: int, replica: int = 0, replicas: int = 1):
    """The ``grad_accum`` collated micro-batches of one step, the position after them, and the dataset index of each
    of their rows in order. With data parallelism a micro-batch spans ``replicas * batch_size`` samples, of which
    data replica ``replica`` reads its slice.

    With ``config.group_by_length`` the step's samples (every replica's) are sorted by length, stably, before they
    are cut into micro-batches: the step reads the same samples with the same weights, but each micro-batch pads to
    its own longest, which for mixed lengths is less padding (``TrainConfig``)."""
    from .data import collate

    step = config.grad_accum * config.batch_size * replicas
    indices = [(position + i) % len(dataset) for i in range(step)]
    loaded = {}  # grouping reads every sample of the step once, to sort them
    if config.group_by_length and config.grad_accum > 1:
        loaded = {i: dataset[i] for i in set(indices)}
        indices.sort(key=lambda i: len(loaded[i].input_ids))
    batches, read = [], []
    for micro in range(config.grad_accum):
        start = (micro * replicas + replica) * config.batch_size
        mine = indices[start:start + config.batch_size]
        samples = [loaded[i] if i in loaded else dataset[i] for i in mine]
        batch = collate(samples, pad_id)
        batch["boundaries"] = [getattr(s, "boundaries", ()) for s in samples]
        batches.append(batch)
        read += mine
    return batches, position + step, read


def _sources(dataset, position: int, config: TrainConfig, replicas: int = 1) -> set[str] | None:
    """The names of the datasets a mixture drew this step's samples from, over every data replica (the logged
    loss is theirs together; `_micro_batches` reads the same indices); None for a dataset that is not a mixture."""
    if not callable(getattr(dataset, "source_of", None)):
        return None
    samples = config.grad_accum * config.batch_size * replicas
    return {dataset.source_of((position + i) % len(dataset)) for i in range(samples)}


def _loss_by_source(dataset, indices: list[int], rows: list[tuple[float, int]] | None) -> dict | None:
    """{dataset name: [summed loss, targets]} of one step's samples (``rows``: each sample's, for the dataset indices
    ``indices`` in the same order), for a mixture read by one process; None otherwise (a parallel job logs only which
    datasets)."""
    if rows is None or not callable(getattr(dataset, "source_of", None)):
        return None
    totals: dict[str, list] = {}
    for index, (nats, targets) in zip(indices, rows, strict=True):
        total = totals.setdefault(dataset.source_of(index), [0.0, 0])
        total[0], total[1] = total[0] + nats, total[1] + targets
    return totals


def _pad_id(config) -> int:
    for value in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)):
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            return value
    return 0


def _row_targets(batch: dict):
    """Target tokens ``forward`` scores in each row of a batch (B,): labels other than -100 on real tokens, except
    each row's first token (no token predicts it)."""
    import torch

    mask = batch["attention_mask"].bool()
    valid = (batch["labels"] != -100) & mask
    first = mask.int().argmax(dim=1)
    valid[torch.arange(valid.shape[0]), first] = False
    return valid.sum(dim=1)


def _count_targets(batch: dict) -> int:
    return int(_row_targets(batch).sum())


def _chunk_planner(model, config: TrainConfig):
    if config.chunk_augmentation is None:
        return None
    from .chunking import ChunkPlanner

    try:
        return ChunkPlanner(model.comet_config.chunk_size, **config.chunk_augmentation)
    except TypeError as err:
        raise ValueError(f"chunk_augmentation {config.chunk_augmentation} does not fit ChunkPlanner: {err}") from None


def _seed_rank(seed: int, step: int, rank: int) -> None:
    """Seeds torch's generators for one step of one rank of a parallel job, so a resumed job draws what a job that
    never stopped draws (a checkpoint holds the main rank's RNG state only)."""
    import torch

    from .data import sample_rng

    torch.manual_seed(sample_rng(seed, step, stream=f"torch/rank-{rank}").getrandbits(63))


def _plan(planner, batch: dict, seed: int, step: int, micro: int):
    """The chunk sizes of one micro-batch, drawn from a generator of its own (a function of seed, step and
    micro-batch only), so the plans of a resumed run need no saved RNG state."""
    from .data import sample_rng

    if planner is None:
        return None
    rng = sample_rng(seed, step, stream=f"chunk-plan/{micro}")
    return planner.plan_batch(batch["attention_mask"].sum(dim=1), rng, batch["boundaries"])


def _accumulate(model, batches: list[dict], plans: list, config: TrainConfig, parallel=None):
    """Forward and backward of every micro-batch of a step; returns the step's loss (mean over its targets, or over
    its samples' means: ``TrainConfig.loss_weighting``), the number of tokens read and, in one process, each
    sample's (summed loss, targets) in reading order (None in a parallel job). In a parallel job the targets and
    tokens of every data replica count, and the gradients are summed over all ranks before this returns."""
    import torch

    device = next(model.parameters()).device
    by_sample = config.loss_weighting == "sample"
    # The denominator: the step's targets, or (by sample) its samples that have targets, each row's loss then
    # divided by that times its own targets.
    count = sum(int((_row_targets(b) > 0).sum()) if by_sample else _count_targets(b) for b in batches)
    count = max(count if parallel is None else parallel.global_count(count), 1)
    loss, tokens, rows = 0.0, 0, [] if parallel is None else None
    for batch, plan in zip(batches, plans):
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
        denominator = (_row_targets(batch).clamp(min=1) * count).to(device) if by_sample else count
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
            if parallel is None:
                out = model(**inputs, chunk_sizes=plan, num_items_in_batch=denominator)
                part = out.loss
                if rows is not None and getattr(out, "row_losses", None) is not None:
                    rows += zip(out.row_losses.tolist(), _row_targets(batch).tolist())
                else:
                    rows = None
            else:
                part = parallel.loss(model, **inputs, chunk_sizes=plan, num_items_in_batch=denominator)
        part.backward()
        loss += float(part.detach())
        tokens += int(batch["attention_mask"].sum())
    if parallel is not None:
        loss, tokens = parallel.reduce(model, loss, tokens)
    return loss, tokens, rows


class _StopSignals:
    """SIGINT and SIGTERM raise KeyboardInterrupt, except inside ``hold()`` (the optimizer update), where they wait
    until the update is complete: a checkpoint written on the way out never holds a half-applied step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.holding, self.pending, self.previous = False, None, {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.holding:
            self.pending = signum
        else:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextmanager
    def hold(self, discard: bool = False):
        """Signals wait until the block ends, then raise; with ``discard`` (the block is already the way out)
        they are dropped."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            if not discard:
                raise KeyboardInterrupt(signal.Signals(signum).name)


def _check_exportable(model, config: TrainConfig) -> None:
    """Fails before training, not after it, when the final adapter could not record its base model."""
    if config.mode != "full" and not model.base_model:
        raise ValueError(
            f"mode {config.mode!r} exports an adapter, which must name its base model, but this model has none; "
            "build it with CometForCausalLM.from_backbone(<model directory>) or use mode 'full'"
        )


def export_model(model, directory: Path, mode: str) -> Path:
    """The trained model for use: an adapter (CoMeT weights, plus ``lora.safetensors`` in LoRA mode) over the
    untouched base, or in mode "full" a full model. The folder appears complete or not at all."""
    model.save_pretrained(directory, adapter=mode != "full")
    return directory

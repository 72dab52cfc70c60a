"""Fine-tuning CoMeT (METHOD.md section 3): a small training loop that is deterministic and resumes exactly.

Data order is a pure function of the position in the data: micro-batch ``a`` of step ``s`` reads samples
``[(s*grad_accum + a)*batch_size, ...)`` modulo the dataset length, and chunk augmentation draws from a generator
seeded by ``(seed, step, micro-batch)``. Together with the checkpointed parameters, optimizer, scheduler and RNG
states, a run that is stopped and resumed ends with exactly the tensors of a run that never stopped.

The loss of each micro-batch is divided by the number of target tokens in the whole accumulation window
(``num_items_in_batch``), so ``grad_accum`` micro-batches equal one batch of their combined size.

This module is imported by the command line's ``--help``: torch and friends are imported inside functions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
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

MODES = ("lora", "full", "memory")
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"
FINAL_DIR = "final"


@dataclass
class TrainConfig:
    """Everything that shapes a training run; validated once, saved with every checkpoint.

    mode                "lora": backbone frozen, LoRA on ``lora_targets`` plus all CoMeT parameters (ships as a small
                        adapter); "memory": backbone frozen, CoMeT parameters only; "full": everything trains.
    lr                  learning rate of the backbone/LoRA; CoMeT's memory trains at ``lr * memory_lr_multiplier``.
    warmup_steps        linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``.
    stop_at             end the run after this step, with the schedule still shaped by ``max_steps`` (a phase of a
                        recipe that was stopped early replays exactly); None trains to ``max_steps``.
    max_grad_norm       clip the global gradient norm; None disables clipping (the norm is still logged).
    bf16                run forward passes under ``torch.autocast(dtype=torch.bfloat16)`` (CPU and GPU).
    chunk_augmentation  keyword arguments of ``ChunkPlanner`` (relative weights of its chunk modes and
                        ``min_chunk``, e.g. ``{"p_fixed": 0.6, "p_random": 0.4}``), or None for fixed chunks of C.
    keep_checkpoints    how many ``checkpoint-<step>`` folders to keep in ``output_dir``.
    """

    output_dir: str
    max_steps: int = 1000
    stop_at: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 2e-4
    memory_lr_multiplier: float = 5.0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    mode: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2
    chunk_augmentation: dict[str, float] | None = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"invalid TrainConfig: {message}")

        self.output_dir = str(self.output_dir)
        self.lora_targets = tuple(self.lora_targets)
        need(bool(self.output_dir), "output_dir must name a folder")
        counts = ("max_steps", "batch_size", "grad_accum", "lora_rank", "log_every", "save_every", "keep_checkpoints")
        for name in counts:
            value = getattr(self, name)
            need(_is_int(value) and value >= 1, f"{name} must be an int >= 1 (got {value!r})")
        need(_is_int(self.warmup_steps) and 0 <= self.warmup_steps <= self.max_steps,
             f"warmup_steps must be an int in 0..max_steps={self.max_steps} (got {self.warmup_steps!r})")
        need(self.stop_at is None or (_is_int(self.stop_at) and 1 <= self.stop_at <= self.max_steps),
             f"stop_at must be an int in 1..max_steps={self.max_steps}, or None (got {self.stop_at!r})")
        need(_is_int(self.seed), f"seed must be an int (got {self.seed!r})")
        need(_is_number(self.lr) and self.lr > 0, f"lr must be > 0 (got {self.lr!r})")
        need(_is_number(self.memory_lr_multiplier) and self.memory_lr_multiplier > 0,
             f"memory_lr_multiplier must be > 0 (got {self.memory_lr_multiplier!r})")
        need(_is_number(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0 (got {self.weight_decay!r})")
        need(_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
             f"min_lr_ratio must lie in [0, 1] (got {self.min_lr_ratio!r})")
        need(self.max_grad_norm is None or (_is_number(self.max_grad_norm) and self.max_grad_norm > 0),
             f"max_grad_norm must be > 0, or None to disable clipping (got {self.max_grad_norm!r})")
        need(self.mode in MODES, f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        need(_is_number(self.lora_alpha) and self.lora_alpha > 0, f"lora_alpha must be > 0 (got {self.lora_alpha!r})")
        need(_is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1,
             f"lora_dropout must lie in [0, 1) (got {self.lora_dropout!r})")
        need(all(isinstance(t, str) and t for t in self.lora_targets) and (self.lora_targets or self.mode != "lora"),
             f"lora_targets must name at least one linear layer, e.g. ('q_proj', 'v_proj') (got {self.lora_targets!r})")
        for name in ("bf16", "gradient_checkpointing", "tensorboard"):
            need(isinstance(getattr(self, name), bool), f"{name} must be True or False (got {getattr(self, name)!r})")
        if self.chunk_augmentation is not None:
            need(isinstance(self.chunk_augmentation, dict) and all(
                isinstance(k, str) and _is_number(v) and v >= 0 for k, v in self.chunk_augmentation.items()),
                "chunk_augmentation must map ChunkPlanner options (p_fixed, p_right_aligned, p_uniform, p_random, "
                f"p_boundary, min_chunk) to numbers >= 0, or be None (got {self.chunk_augmentation!r})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def last_step(self) -> int:
        """The step this run ends at: ``stop_at`` if set, else ``max_steps``."""
        return self.max_steps if self.stop_at is None else self.stop_at


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


# ----------------------------------------------------------------------------------------------------------------
# The entry point


def train(model, dataset, config: TrainConfig, resume: bool = True, parallel=None) -> TrainResult:
    """Trains ``model`` in place on ``dataset`` (random access: ``len(dataset)``, ``dataset[i]`` -> a Sample with
    ``input_ids``, ``labels`` and ``boundaries``) and exports it to ``output_dir/final``.

    With ``resume`` the run continues from the latest checkpoint in ``output_dir``. Ctrl-C or SIGTERM writes a
    checkpoint of the last complete step before the KeyboardInterrupt propagates, so rerunning loses nothing.

    ``parallel`` (a ``cometlm.parallel.distributed.ContextParallel``) makes this process one rank of a pipeline x
    data-parallel job: each step runs the pipeline schedule and sums gradients over all ranks; only its main rank
    writes checkpoints, metrics, the plot and the final model (on the others ``checkpoint`` is None).
    """
    from .checkpoint import capture_rng_state, latest_checkpoint, load_checkpoint

    if len(dataset) == 0:
        raise ValueError("the dataset is empty; give at least one sample")
    _check_exportable(model, config)
    planner = _chunk_planner(model, config)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    _seed_everything(config.seed)
    prepare_model(model, config)
    optimizer, scheduler = build_optimizer(model, config)

    found = latest_checkpoint(output) if resume else None
    if found is None:
        progress = Progress(0, 0, 0, 0.0, None, capture_rng_state())
    else:
        info = load_checkpoint(found, model, optimizer, scheduler)
        if info.step > config.last_step:
            raise ValueError(f"{found} holds step {info.step}, past stop_at={config.stop_at}: the run cannot stop "
                             "there any more; use another output folder, or a later or no stop_at")
        _warn_about_changes(info.config, config)
        extra = info.extra
        progress = Progress(info.step, info.data_position, extra["tokens"], extra["elapsed"], extra["loss"],
                            capture_rng_state())
        print(f"resuming from {info.path} (step {info.step})", file=sys.stderr)

    writes = parallel is None or parallel.is_main
    log = TrainingLog(config, progress.step) if writes else None
    try:
        progress, checkpoint = _run(model, dataset, config, optimizer, scheduler, planner, progress, log, found,
                                    parallel)
    finally:
        if log is not None:
            log.close()
    final_dir, plot = output / FINAL_DIR, output / LOSS_PLOT_FILE
    if writes:
        if checkpoint is None:
            checkpoint = _save(output, model, optimizer, scheduler, progress, config)
        export_model(model, final_dir, config.mode)
        plot_loss_curve(output / METRICS_FILE, plot)
    model.train(was_training)
    return TrainResult(progress.step, progress.loss, progress.tokens, progress.elapsed, output, final_dir, checkpoint,
                       output / METRICS_FILE, plot)


def _run(model, dataset, config, optimizer, scheduler, planner, progress: Progress, log, checkpoint, parallel=None):
    """The loop. Parameters, optimizer and scheduler only change inside ``signals.hold()``, together with
    ``progress``; so whenever an interrupt arrives, ``progress`` describes the tensors and can be checkpointed.

    ``checkpoint`` is the checkpoint of the current step, if one is on disk; returns the final progress and that.
    ``log`` is None on the ranks of a parallel job that do not write (see ``train``).
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
                replica, replicas = (0, 1) if parallel is None else (parallel.replica, parallel.replicas)
                batches, position = _micro_batches(dataset, progress.position, config, pad_id, replica, replicas)
                sources = _sources(dataset, progress.position, config, replicas) if log is not None else None
                plans = [_plan(planner, b, config.seed, progress.step, micro * replicas + replica)
                         for micro, b in enumerate(batches)]
                loss, tokens = _accumulate(model, batches, plans, config, parallel)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss is {loss} at step {progress.step + 1}; lower lr, or resume from the last checkpoint"
                    )
                with signals.hold():
                    grad_norm = _clip(params, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    progress = Progress(progress.step + 1, position, progress.tokens + tokens,
                                        time.perf_counter() - started, loss, capture_rng_state())
                    checkpoint = None
                if log is None:
                    continue
                log.step(progress, lr_factor(progress.step - 1, config) * config.lr, grad_norm, tokens,
                         time.perf_counter() - step_start, sources)
                if progress.step % config.save_every == 0:
                    checkpoint = _save(output, model, optimizer, scheduler, progress, config)
        except KeyboardInterrupt:
            optimizer.zero_grad(set_to_none=True)
            if log is None:
                raise
            if checkpoint is None:
                checkpoint = _save(output, model, optimizer, scheduler, progress, config)
            print(f"\ninterrupted: {checkpoint} holds step {progress.step}; run again to resume", file=sys.stderr)
            raise
    return progress, checkpoint


def _save(output: Path, model, optimizer, scheduler, progress: Progress, config: TrainConfig) -> Path:
    from .checkpoint import save_checkpoint

    extra = {"tokens": progress.tokens, "elapsed": progress.elapsed, "loss": progress.loss}
    return save_checkpoint(output, model, optimizer, scheduler, progress.step, progress.position, progress.rng,
                           extra=extra, config=config.to_dict(), keep=config.keep_checkpoints)


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


# ----------------------------------------------------------------------------------------------------------------
# Model, optimizer, schedule


def prepare_model(model, config: TrainConfig):
    """Sets which parameters train for ``config.mode`` (adding LoRA if the model has none yet) and train mode."""
    from .lora import apply_lora, freeze_backbone, has_lora

    if config.mode == "full":
        if has_lora(model):
            raise ValueError("mode 'full' trains the whole backbone, but the model has LoRA; use mode 'lora'")
        for p in model.backbone_model.parameters():
            p.requires_grad_(True)
    elif config.mode == "memory":
        freeze_backbone(model)
    elif not has_lora(model):
        apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
    for p in model.memory.parameters():
        p.requires_grad_(True)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def build_optimizer(model, config: TrainConfig):
    """AdamW over the trainable parameter groups, and the warm-up + cosine schedule as a LambdaLR."""
    import torch

    from .lora import trainable_parameter_groups

    groups = trainable_parameter_groups(model, config.lr, config.memory_lr_multiplier, config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))  # beta2 as in LLaMA and nanoGPT
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    return optimizer, scheduler


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of every group's lr for optimizer step ``step`` (0-based): linear warm-up to 1, then cosine
    decay to ``min_lr_ratio`` at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_steps = max(config.max_steps - config.warmup_steps - 1, 1)
    progress = min((step - config.warmup_steps) / decay_steps, 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _clip(params, max_grad_norm: float | None) -> float:
    import torch

    limit = max_grad_norm if max_grad_norm is not None else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(params, limit))


# ----------------------------------------------------------------------------------------------------------------
# Data


def _micro_batches(dataset, position: int, config: TrainConfig, pad_id: int, replica: int = 0, replicas: int = 1):
    """The ``grad_accum`` collated micro-batches of one step, and the position after them. With data parallelism
    a micro-batch spans ``replicas * batch_size`` samples, of which data replica ``replica`` reads its slice."""
    from .data import collate

    batches = []
    for _ in range(config.grad_accum):
        start = position + replica * config.batch_size
        samples = [dataset[(start + i) % len(dataset)] for i in range(config.batch_size)]
        batch = collate(samples, pad_id)
        batch["boundaries"] = [getattr(s, "boundaries", ()) for s in samples]
        batches.append(batch)
        position += config.batch_size * replicas
    return batches, position


def _sources(dataset, position: int, config: TrainConfig, replicas: int = 1) -> set[str] | None:
    """The names of the datasets a mixture drew this step's samples from, over every data replica (the logged
    loss is theirs together; `_micro_batches` reads the same indices); None for a dataset that is not a mixture."""
    if not callable(getattr(dataset, "source_of", None)):
        return None
    samples = config.grad_accum * config.batch_size * replicas
    return {dataset.source_of((position + i) % len(dataset)) for i in range(samples)}


def _pad_id(config) -> int:
    for value in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)):
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            return value
    return 0


def _count_targets(batch: dict) -> int:
    """Target tokens ``forward`` scores in a batch: labels other than -100 on real tokens, except each row's first
    token (no token predicts it)."""
    import torch

    mask = batch["attention_mask"].bool()
    valid = (batch["labels"] != -100) & mask
    first = mask.int().argmax(dim=1)
    valid[torch.arange(valid.shape[0]), first] = False
    return int(valid.sum())


def _chunk_planner(model, config: TrainConfig):
    if config.chunk_augmentation is None:
        return None
    from .chunking import ChunkPlanner

    try:
        return ChunkPlanner(model.comet_config.chunk_size, **config.chunk_augmentation)
    except TypeError as err:
        raise ValueError(f"chunk_augmentation {config.chunk_augmentation} does not fit ChunkPlanner: {err}") from None


def _plan(planner, batch: dict, seed: int, step: int, micro: int):
    """The chunk sizes of one micro-batch, drawn from a generator of its own (a function of seed, step and
    micro-batch only), so the plans of a resumed run need no saved RNG state."""
    from .data import sample_rng

    if planner is None:
        return None
    rng = sample_rng(seed, step, stream=f"chunk-plan/{micro}")
    return planner.plan_batch(batch["attention_mask"].sum(dim=1), rng, batch["boundaries"])


def _accumulate(model, batches: list[dict], plans: list, config: TrainConfig, parallel=None) -> tuple[float, int]:
    """Forward and backward of every micro-batch of a step; returns the step's loss (mean over its targets) and
    the number of tokens read. In a parallel job the targets and tokens of every data replica count, and the
    gradients are summed over all ranks before this returns."""
    import torch

    device = next(model.parameters()).device
    count = sum(_count_targets(b) for b in batches)
    count = max(count if parallel is None else parallel.global_count(count), 1)
    loss, tokens = 0.0, 0
    for batch, plan in zip(batches, plans):
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
            if parallel is None:
                part = model(**inputs, chunk_sizes=plan, num_items_in_batch=count).loss
            else:
                part = parallel.loss(model, **inputs, chunk_sizes=plan, num_items_in_batch=count)
        part.backward()
        loss += float(part.detach())
        tokens += int(batch["attention_mask"].sum())
    if parallel is not None:
        loss, tokens = parallel.reduce(model, loss, tokens)
    return loss, tokens


# ----------------------------------------------------------------------------------------------------------------
# Interrupts


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
    def hold(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(signal.Signals(signum).name)


# ----------------------------------------------------------------------------------------------------------------
# Logging and outputs


class TrainingLog:
    """A tqdm bar (loss, tokens/s, ETA) every step; every ``log_every`` steps and at the last step a line in
    ``metrics.jsonl`` (and TensorBoard when asked and installed)."""

    def __init__(self, config: TrainConfig, start_step: int):
        from tqdm.auto import tqdm

        self.config = config
        self.path = Path(config.output_dir) / METRICS_FILE
        _drop_metrics_after(self.path, start_step)  # steps past the checkpoint are run again, and logged again
        self.writer = _tensorboard_writer(Path(config.output_dir)) if config.tensorboard else None
        self.bar = tqdm(total=config.last_step, initial=start_step, desc="training", unit="step", dynamic_ncols=True)
        self.window = []

    def step(self, progress: Progress, lr: float, grad_norm: float, tokens: int, seconds: float,
             sources: set[str] | None = None) -> None:
        self.window.append((progress.loss, grad_norm, tokens, seconds, sources))
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{progress.loss:.4f}", tok_s=f"{tokens / max(seconds, 1e-9):,.0f}")
        if progress.step % self.config.log_every and progress.step != self.config.last_step:
            return
        losses, norms, counts, times, sources = zip(*self.window)
        self.window = []
        record = {
            "step": progress.step,
            "loss": sum(losses) / len(losses),
            "lr": lr,
            "grad_norm": sum(norms) / len(norms),
            "tokens_per_s": sum(counts) / max(sum(times), 1e-9),
            "tokens": progress.tokens,
            "elapsed": round(progress.elapsed, 3),
        }
        if sources[0] is not None:  # a mixture: which of its datasets the logged steps' samples came from
            record["sources"] = sorted(set().union(*sources))
            by_source: dict[str, list[float]] = {}
            for loss, step_sources in zip(losses, sources):
                if len(step_sources) == 1:  # a step of one dataset's samples only
                    by_source.setdefault(next(iter(step_sources)), []).append(loss)
            if by_source:
                record["loss_by_source"] = {k: sum(v) / len(v) for k, v in sorted(by_source.items())}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                self.writer.add_scalar(f"train/{key}", record[key], progress.step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _drop_metrics_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
    os.replace(tmp, path)


def _tensorboard_writer(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed, so nothing is logged to TensorBoard (pip install tensorboard)",
                      stacklevel=3)
        return None
    return SummaryWriter(str(output / "tensorboard"))


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (the process was killed while writing it) is left out."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_loss_curve(metrics: Path, png: Path, smooth: int = 25) -> Path:
    """Loss against step from the metrics file (every run of a resumed training), as a PNG; no pyplot state.

    The logged losses are drawn faintly with a moving average of `smooth` of them on top. For a mixture, each
    dataset gets its own colour, from the logged steps whose samples all came from it (`loss_by_source`; a
    record whose every step mixed datasets is drawn as "mixed"), since sources with losses as different as a
    passkey answer's and a book's would otherwise hide each other's trends.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics)
    series: dict[str, list[tuple[int, float]]] = {}  # name -> (step, loss)
    for record in records:
        if "sources" not in record:
            series.setdefault("training loss", []).append((record["step"], record["loss"]))
            continue
        by_source = record.get("loss_by_source") or {}
        for name, loss in by_source.items():
            series.setdefault(name, []).append((record["step"], loss))
        if len(record["sources"]) > 1 and not by_source:  # only steps that mixed datasets
            series.setdefault("mixed", []).append((record["step"], record["loss"]))
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for k, (name, part) in enumerate(series.items()):
        steps, losses = [step for step, _ in part], [loss for _, loss in part]
        color = f"C{k}"
        if len(part) < 50:
            axes.plot(steps, losses, marker=".", color=color, label=name)
            continue
        axes.plot(steps, losses, linestyle="none", marker=".", markersize=2, alpha=0.25, color=color)
        window = min(smooth, len(part))
        average = [sum(losses[i - window + 1 : i + 1]) / window for i in range(window - 1, len(losses))]
        axes.plot(steps[window - 1 :], average, color=color, label=f"{name} (mean of {window})")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    if len(series) > 1 or len(records) >= 50:
        axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    tmp = png.with_name(f".{png.stem}.tmp-{os.getpid()}{png.suffix}")
    figure.savefig(tmp)
    os.replace(tmp, png)
    return png


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
    from .checkpoint import replace_dir

    staging = directory.with_name(f".{directory.name}.staging-{os.getpid()}")
    try:
        model.save_pretrained(staging / directory.name, adapter=mode != "full")
        replace_dir(staging / directory.name, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


# ----------------------------------------------------------------------------------------------------------------
# Command line

DATA_FORMS = {
    "jsonl-text:PATH": 'JSONL with one {"text": ...} per line; long texts are split into --max-length windows',
    "jsonl-chat:PATH": 'JSONL with one {"messages": [{"role", "content"}, ...]} per line; loss on assistant turns',
    "text:PATH": "a UTF-8 text file, or a folder of .txt files, split into --max-length windows",
    "passkey": "generated passkey prompts of --max-length/2 to --max-length tokens; loss on the key and the period after it",
    "needle": "generated needle-in-a-haystack prompts over the bundled essays; loss on the answer",
    "passkey:depth=LOW-HIGH": "passkey (or needle) prompts with the key's depth drawn from LOW..HIGH percent, e.g. "
                              "depth=0-80 to keep keys out of the last chunk",
    "passkey:digits=N": "passkey keys of N digits (default 5), or digits=LOW-HIGH drawn per prompt; options "
                        "combine with commas, e.g. passkey:depth=0-40,digits=5-7",
    "passkey:period=0": "the key alone as the target, without the period after it (the same prompts; how the "
                        "shipped adapter's first three phases were trained)",
    "lm:bible": "random --max-length windows of the bundled KJV Bible; loss on every token",
    "lm:essays": "random --max-length windows of the bundled Paul Graham essays; loss on every token",
}
_PASSKEY_ANSWER_EXTRA = 2  # " " and "." around the key's digits: a byte-level tokenizer needs at most a token per byte

_CONFIG_OPTIONS = {
    "output_dir": ("folder for checkpoints, metrics.jsonl, loss.png and the final model; rerunning resumes there",
                   dict(required=True, metavar="DIR")),
    "max_steps": ("optimizer steps to train for (the length of the learning-rate schedule)", dict(type=int)),
    "stop_at": ("end after this step, the schedule still running to --max-steps (replays a phase stopped early; "
                "resuming later with a larger value or without it continues the same schedule)", dict(type=int)),
    "batch_size": ("samples per micro-batch", dict(type=int)),
    "grad_accum": ("micro-batches per optimizer step (equal to one batch of their combined size)", dict(type=int)),
    "lr": ("learning rate of LoRA / the backbone", dict(type=float)),
    "memory_lr_multiplier": ("CoMeT's memory modules train at lr times this", dict(type=float)),
    "weight_decay": ("AdamW weight decay on matrices (never on norms, biases or vectors)", dict(type=float)),
    "warmup_steps": ("linear warm-up steps before the cosine decay", dict(type=int)),
    "min_lr_ratio": ("the cosine decay ends at lr times this", dict(type=float)),
    "max_grad_norm": ("clip the global gradient norm to this; 0 disables clipping", dict(type=float)),
    "bf16": ("run forward passes under bfloat16 autocast", dict(action="store_true")),
    "gradient_checkpointing": ("recompute each (layer, chunk) step in the backward pass to save memory",
                               dict(action="store_true")),
    "mode": ("lora: LoRA + CoMeT on a frozen backbone (a small adapter); memory: CoMeT only; full: everything",
             dict(choices=MODES)),
    "lora_rank": ("LoRA rank", dict(type=int)),
    "lora_alpha": ("LoRA scaling numerator (the update is scaled by alpha / rank)", dict(type=float)),
    "lora_dropout": ("dropout on the LoRA input", dict(type=float)),
    "lora_targets": ("linear layers of each decoder layer that get LoRA", dict(nargs="+", metavar="NAME")),
    "seed": ("seed of initialisation, dropout and chunk plans", dict(type=int)),
    "log_every": ("write a metrics.jsonl line every this many steps", dict(type=int)),
    "save_every": ("write a checkpoint every this many steps", dict(type=int)),
    "keep_checkpoints": ("how many checkpoints to keep", dict(type=int)),
    "chunk_augmentation": ("vary chunk sizes: ChunkPlanner options as NAME=VALUE, e.g. p_fixed=0.6 p_random=0.2 "
                           "p_boundary=0.2 (weights of fixed, right_aligned, uniform, random, boundary; min_chunk)",
                           dict(nargs="+", metavar="NAME=VALUE")),
    "tensorboard": ("also log to TensorBoard in output-dir/tensorboard (if tensorboard is installed)",
                    dict(action="store_true")),
}


def register(subparsers) -> None:
    """Adds the ``train`` subcommand to the ``cometlm`` command line's subparsers."""
    from ..cli import _add_model_options
    from ..parallel.options import add_parallel_options

    parser = subparsers.add_parser(
        "train", help="fine-tune CoMeT on a dataset (LoRA + memory by default); rerun to resume",
        description="Fine-tunes CoMeT's memory (and LoRA on the frozen backbone, or the whole model) with exact "
        "resume: rerunning the same command continues from the latest checkpoint in --output-dir. Ctrl-C writes a "
        "checkpoint before stopping. The trained model lands in OUTPUT_DIR/final; use it with --comet.",
    )
    forms = "; ".join(f"{form} ({what})" for form, what in DATA_FORMS.items())
    parser.add_argument(
        "--data", required=True, nargs="+", metavar="SPEC",
        help=f"the training data, one of: {forms}. Several SPECs mix their samples; SPEC@WEIGHT sets a source's share "
        "(default 1), e.g. --data passkey@0.8 lm:essays@0.2",
    )
    parser.add_argument("--max-length", type=int, default=2048,
                        help="longest sample in tokens (default 2048): texts are split into windows of it, chats "
                        "truncated to it, generated prompts drawn between half of it and it")
    parser.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                        help="a bad record in a data file is skipped and listed in the report (default), or stops")
    parser.add_argument("--no-resume", action="store_true",
                        help="start afresh even if --output-dir holds checkpoints (they are replaced as it goes)")
    group = parser.add_argument_group("training")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, (text, options) in _CONFIG_OPTIONS.items():
        default = defaults[name]
        if default is not dataclasses.MISSING and options.get("action") != "store_true":
            text = text if default is None else f"{text} (default {_show(default)})"
            options = {**options, "default": default}
        group.add_argument(f"--{name.replace('_', '-')}", help=text, **options)
    _add_model_options(parser)
    add_parallel_options(parser)
    parser.set_defaults(run=cmd_train)


def _show(value) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


def cmd_train(args) -> int:
    from ..cli import _load_model
    from ..parallel.options import parallel_job

    config = config_from_args(args)  # bad settings fail before a model is loaded
    with parallel_job(args) as parallel:  # None unless --context-parallel / torchrun
        model = _load_model(args)  # with --comet, also the LoRA weights it was trained with
        if parallel is not None:
            model.to(parallel.device)
        dataset = load_mixture(args.data, model.tokenizer, args.max_length, args.on_error, config.seed)
        try:
            result = train(model, dataset, config, resume=not args.no_resume, parallel=parallel)
        except KeyboardInterrupt:
            print("stopped; run the same command again to resume", file=sys.stderr)
            return 130
    if parallel is not None and not parallel.is_main:
        return 0
    print(
        f"trained {result.steps} steps ({result.tokens:,} tokens in {result.wall_seconds:,.0f} s), last loss "
        f"{result.final_loss:.4f}; model in {result.final_dir} (use it with --comet {result.final_dir}); "
        f"metrics in {result.metrics}, loss curve in {result.loss_plot}",
        file=sys.stderr,
    )
    return 0


def config_from_args(args) -> TrainConfig:
    values = {name: getattr(args, name) for name in _CONFIG_OPTIONS}
    values["max_grad_norm"] = values["max_grad_norm"] or None
    values["chunk_augmentation"] = _parse_options(values["chunk_augmentation"])
    return TrainConfig(**values)


def _parse_options(pairs: list[str] | None) -> dict[str, float] | None:
    """``["p_fixed=0.6", "min_chunk=64"]`` -> ``{"p_fixed": 0.6, "min_chunk": 64}`` (integers stay integers)."""
    if pairs is None:
        return None
    options = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            options[name] = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            name = ""
        if not name:
            raise ValueError(f"--chunk-augmentation takes NAME=NUMBER pairs such as p_fixed=0.6 (got {pair!r})")
    return options


def load_mixture(specs: list[str], tokenizer, max_length: int, on_error: str = "skip", seed: int = 0):
    """One dataset from ``--data`` SPEC[@WEIGHT] arguments: the named dataset, or a ``MixtureDataset`` of several."""
    from .data import MixtureDataset

    datasets, weights, names = [], [], []
    for spec in specs:
        name, at, weight = spec.rpartition("@") if "@" in spec else (spec, "", "1")
        names.append(name)
        try:
            weights.append(float(weight))
        except ValueError:
            raise ValueError(f"--data {spec!r}: the weight after '@' must be a number, e.g. passkey@0.8") from None
        datasets.append(load_dataset(name, tokenizer, max_length, on_error, seed))
    if len(datasets) == 1:
        return datasets[0]
    return MixtureDataset(datasets, weights, seed=seed, names=names)


def load_dataset(spec: str, tokenizer, max_length: int, on_error: str = "skip", seed: int = 0):
    """The dataset a ``--data`` SPEC names (see ``DATA_FORMS``); file datasets print what they read and skipped."""
    from ..bundled import encode
    from . import data, tasks

    kind, _, path = spec.partition(":")
    files = {"jsonl-text": data.JsonlTextDataset, "jsonl-chat": data.JsonlChatDataset, "text": data.TextFilesDataset}
    if kind in files and path:
        dataset = files[kind](_text_files(path) if kind == "text" else path, tokenizer, max_length, on_error)
        print(dataset.report(), file=sys.stderr)
        return dataset
    if kind in ("passkey", "needle"):
        options = _task_options(spec, path, kind)
        if kind == "passkey":
            digits = options.get("digits", (5, 5))
            build = functools.partial(tasks.passkey_sample, key_digits=digits[1])  # the longest key checks the length
            answer = digits[1] + _PASSKEY_ANSWER_EXTRA
            end = "." if options.get("period", 1) else ""
            make = functools.partial(data.PasskeyDataset, key_digits=digits, answer_end=end)
        else:
            build, make = tasks.needle_sample, data.NeedleDataset
            answer = len(encode(tokenizer, " " + tasks.NEEDLE_ANSWER))
        lengths = (max_length // 2, max_length - answer)
        try:
            build(tokenizer, lengths[0], 0.5, random.Random(seed))  # the shortest prompt, before training starts
        except ValueError as err:
            raise ValueError(
                f"--max-length {max_length} is too short for {spec}: its shortest prompts ({lengths[0]} tokens, half "
                f"of --max-length) fail with: {err}"
            ) from None
        return make(tokenizer, lengths, seed=seed, depth_range=options.get("depth", (0.0, 1.0)))
    if kind == "lm" and path in ("bible", "essays"):
        return data.CorpusLMDataset(tokenizer, path, max_length, seed=seed)
    forms = "\n  ".join(DATA_FORMS)
    raise ValueError(f"--data {spec!r} is not a data source; use one of:\n  {forms}")


def _task_options(spec: str, options: str, kind: str) -> dict[str, tuple]:
    """A generated task's comma-separated options: ``depth=LOW-HIGH`` in percent, as fractions, and (passkey only)
    ``digits=N`` or ``digits=LOW-HIGH``, as (low, high) counts, and ``period=0`` or ``1`` (the target's period)."""
    allowed = ("depth", "digits", "period") if kind == "passkey" else ("depth",)
    usage = "depth=LOW-HIGH in percent" + (", digits=N or digits=LOW-HIGH and period=0 or 1" if kind == "passkey"
                                           else "")
    example = "passkey:depth=0-80,digits=5-7" if kind == "passkey" else f"{kind}:depth=0-80"
    parsed = {}
    for option in filter(None, options.split(",")):
        name, _, value = option.partition("=")
        low, dash, high = value.partition("-")
        try:
            if name not in allowed or name in parsed:
                raise ValueError
            if name == "depth":
                parsed[name] = (float(low) / 100, float(high) / 100)
            elif name == "period":
                if value not in ("0", "1"):
                    raise ValueError
                parsed[name] = int(value)
            else:
                parsed[name] = (int(low), int(high) if dash else int(low))
        except ValueError:
            raise ValueError(f"--data {spec!r}: the options are {usage}, comma-separated, e.g. {example}") from None
    first, last = parsed.get("depth", (0.0, 1.0))
    if not 0.0 <= first <= last <= 1.0:
        raise ValueError(f"--data {spec!r}: the depths must satisfy 0 <= LOW <= HIGH <= 100")
    low, high = parsed.get("digits", (5, 5))
    if not 1 <= low <= high:
        raise ValueError(f"--data {spec!r}: the digits must satisfy 1 <= LOW <= HIGH")
    return parsed


def _text_files(path: str) -> list[Path]:
    folder = Path(path)
    if not folder.is_dir():
        return [folder]
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .txt files")
    return files

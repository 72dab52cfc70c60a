"""What shapes a training run: ``TrainConfig``, validated once and saved with every checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

MODES = ("lora", "full", "memory")
LOSS_WEIGHTINGS = ("token", "sample")
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"
FINAL_DIR = "final"


@dataclass
class TrainConfig:
    """Everything that shapes a training run; validated once, saved with every checkpoint.

    mode                "lora": backbone frozen, LoRA on ``lora_targets`` plus all CoMeT parameters (ships as a small
                        adapter); "memory": backbone frozen, CoMeT parameters only; "full": everything trains.
    lr                  learning rate of the backbone/LoRA; CoMeT's memory trains at ``lr * memory_lr_multiplier``.
    gate_weight_lr_multiplier
                        the global memory's gate weights train at the memory's learning rate times this (1.0: as the
                        rest of the memory). Adam moves every weight by about its learning rate a step, so a gate
                        logit, a sum over 2d inputs that share a large constant part, moves up to 2d times as fast as
                        the gate's bias: at 1.0 trained gates became a per-layer constant, 0 or 1 in most layers
                        (docs/EXPERIMENTS.md, session 27); 0.01 slows the weights, not the bias.
    warmup_steps        linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``.
    stop_at             end the run after this step, with the schedule still shaped by ``max_steps`` (a phase of a
                        recipe that was stopped early replays exactly); None trains to ``max_steps``.
    max_grad_norm       clip the global gradient norm; None disables clipping (the norm is still logged).
    bf16                run forward passes under ``torch.autocast(dtype=torch.bfloat16)`` (CPU and GPU).
    chunk_augmentation  keyword arguments of ``ChunkPlanner`` (relative weights of its chunk modes, ``min_chunk`` and
                        ``aligned``, e.g. ``{"p_fixed": 0.6, "p_random": 0.4, "aligned": 1}``), or None for fixed
                        chunks of C. ``aligned`` draws one plan per micro-batch, so its samples' chunks line up
                        (less padding; ``training.chunking``).
    keep_checkpoints    how many ``checkpoint-<step>`` folders to keep in ``output_dir``.
    loss_weighting      "token": the step's loss is the mean over all its target tokens, so a sample weighs by its
                        number of targets (a language-modelling sample scores ~1,000 tokens, a question's answer a
                        few); "sample": each sample's mean over its own targets, the samples weighted equally, so a
                        mixture's weights are what the gradient sees.
    group_by_length     sort each step's ``batch_size * grad_accum`` samples by length before cutting them into
                        micro-batches: the step reads the same samples with the same weights (its loss and gradient
                        are unchanged without chunk augmentation, which draws per micro-batch), but each micro-batch
                        pads to its own longest sample. For prompts of 1,024-2,048 tokens in two micro-batches of 4,
                        the padded batch tensors fall from 1.20x the real tokens to 1.11x; the rows computed (a sample
                        that has ended does not run) hardly change (1.13x to 1.12x; with aligned chunk plans 1.03x
                        to 1.02x). Changes nothing at grad_accum 1.
    """

    output_dir: str
    max_steps: int = 1000
    stop_at: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 2e-4
    memory_lr_multiplier: float = 5.0
    gate_weight_lr_multiplier: float = 1.0
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
    loss_weighting: str = "token"
    group_by_length: bool = False

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
        need(_is_number(self.gate_weight_lr_multiplier) and self.gate_weight_lr_multiplier > 0,
             f"gate_weight_lr_multiplier must be > 0 (got {self.gate_weight_lr_multiplier!r})")
        need(_is_number(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0 (got {self.weight_decay!r})")
        need(_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
             f"min_lr_ratio must lie in [0, 1] (got {self.min_lr_ratio!r})")
        need(self.max_grad_norm is None or (_is_number(self.max_grad_norm) and self.max_grad_norm > 0),
             f"max_grad_norm must be > 0, or None to disable clipping (got {self.max_grad_norm!r})")
        need(self.mode in MODES, f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        need(self.loss_weighting in LOSS_WEIGHTINGS,
             f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)} (got {self.loss_weighting!r})")
        need(_is_number(self.lora_alpha) and self.lora_alpha > 0, f"lora_alpha must be > 0 (got {self.lora_alpha!r})")
        need(_is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1,
             f"lora_dropout must lie in [0, 1) (got {self.lora_dropout!r})")
        need(all(isinstance(t, str) and t for t in self.lora_targets) and (self.lora_targets or self.mode != "lora"),
             f"lora_targets must name at least one linear layer, e.g. ('q_proj', 'v_proj') (got {self.lora_targets!r})")
        for name in ("bf16", "gradient_checkpointing", "tensorboard", "group_by_length"):
            need(isinstance(getattr(self, name), bool), f"{name} must be True or False (got {getattr(self, name)!r})")
        if self.chunk_augmentation is not None:
            need(isinstance(self.chunk_augmentation, dict) and all(
                isinstance(k, str) and _is_number(v) and v >= 0 for k, v in self.chunk_augmentation.items()),
                "chunk_augmentation must map ChunkPlanner options (p_fixed, p_right_aligned, p_uniform, p_random, "
                f"p_boundary, min_chunk, aligned) to numbers >= 0, or be None (got {self.chunk_augmentation!r})")

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

"""AdamW over LoRA and CoMeT's memory (the memory at 5x the learning rate, as the paper trains it), the warm-up +
cosine schedule, and gradient clipping."""

from __future__ import annotations

import math

from .config import TrainConfig


def trainable_parameter_groups(model, lr: float, memory_lr_multiplier: float = 5.0, weight_decay: float = 0.0,
                               gate_weight_lr_multiplier: float = 1.0):
    """AdamW parameter groups: CoMeT's memory at ``lr * memory_lr_multiplier`` (the paper trains it at 5x), the
    rest at ``lr``; weight decay only on matrices, never on norms, biases or other 1-D parameters. With
    ``gate_weight_lr_multiplier`` other than 1, the global memory's gate weights form a group of their own at the
    memory's learning rate times it (``TrainConfig.gate_weight_lr_multiplier``).

    Frozen parameters are left out; empty groups are dropped. Each group has a ``name`` for logs and checkpoints.
    """
    memory = {id(p) for p in model.memory.parameters()}
    gates = {id(p) for p in model.memory.gate_weights()} if gate_weight_lr_multiplier != 1 else set()
    rates = {"backbone": lr, "memory": lr * memory_lr_multiplier,
             "memory_gate": lr * memory_lr_multiplier * gate_weight_lr_multiplier}
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "memory_gate" if id(p) in gates else "memory" if id(p) in memory else "backbone"
        decay = p.dim() >= 2 and weight_decay > 0
        key = f"{part}{'' if decay else '_no_decay'}"
        group = groups.setdefault(
            key,
            {
                "name": key,
                "params": [],
                "lr": rates[part],
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        group["params"].append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters; nothing to optimise")
    return list(groups.values())


def build_optimizer(model, config: TrainConfig):
    """AdamW over the trainable parameter groups, and the warm-up + cosine schedule as a LambdaLR."""
    import torch

    groups = trainable_parameter_groups(model, config.lr, config.memory_lr_multiplier, config.weight_decay,
                                        config.gate_weight_lr_multiplier)
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


def clip_gradients(params, max_grad_norm: float | None) -> float:
    import torch

    limit = max_grad_norm if max_grad_norm is not None else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(params, limit))

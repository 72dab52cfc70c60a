"""`cometlm train`: fine-tune CoMeT on a mixture of data sources, resumable (see ``cometlm.training``)."""

from __future__ import annotations

import dataclasses
import sys

from cometlm.parallel.options import add_parallel_options
from cometlm.training.config import LOSS_WEIGHTINGS, MODES, TrainConfig
from cometlm.training.specs import DATA_FORMS

from .options import add_model_options, load_model

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
    "gate_weight_lr_multiplier": ("the global memory's gate weights train at the memory's lr times this (1: as "
                                  "the rest; 0.01 keeps the gates from saturating, TrainConfig)", dict(type=float)),
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
                           "p_boundary=0.2 (weights of fixed, right_aligned, uniform, random, boundary; min_chunk; "
                           "aligned=1: one draw per micro-batch, so its samples' chunks line up and pad less)",
                           dict(nargs="+", metavar="NAME=VALUE")),
    "loss_weighting": ("token: every target token weighs the same (a long language-modelling sample outweighs a "
                       "short answer); sample: each sample's mean loss, samples weighted equally (a mixture's "
                       "weights are the gradient's)", dict(choices=LOSS_WEIGHTINGS)),
    "group_by_length": ("sort each step's samples by length before cutting them into --grad-accum micro-batches: "
                        "the same step with less padding", dict(action="store_true")),
    "tensorboard": ("also log to TensorBoard in output-dir/tensorboard (if tensorboard is installed)",
                    dict(action="store_true")),
}


def register(subparsers) -> None:
    """Adds the ``train`` subcommand to the ``cometlm`` command line's subparsers."""
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
                        help="start afresh even if --output-dir holds a run: its checkpoints and final model are "
                        "deleted first, its metrics start over")
    group = parser.add_argument_group("training")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, (text, options) in _CONFIG_OPTIONS.items():
        default = defaults[name]
        if default is not dataclasses.MISSING and options.get("action") != "store_true":
            text = text if default is None else f"{text} (default {_show(default)})"
            options = {**options, "default": default}
        group.add_argument(f"--{name.replace('_', '-')}", help=text, **options)
    add_model_options(parser, dtype="float32")  # a recipe's replay does not depend on the machine
    add_parallel_options(parser)
    parser.set_defaults(run=cmd_train)


def _show(value) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


def cmd_train(args) -> int:
    from cometlm.parallel.options import parallel_job
    from cometlm.training.loop import train
    from cometlm.training.specs import check_mixture, load_mixture

    config = config_from_args(args)  # bad settings and data sources fail before a model is loaded
    check_mixture(args.data)
    training = False  # an interrupt while training has written its checkpoint (`train`): say how to resume
    try:
        # the interrupt leaves the job's block, so a parallel job closes without waiting for its peers' last
        # messages (they stopped too): its own checkpoint is written, and no rank reports a failure
        with parallel_job(args) as parallel:  # None unless --context-parallel / torchrun
            model = load_model(args)  # with --comet, also the LoRA weights it was trained with
            if parallel is not None:
                model.to(parallel.device)
            dataset = load_mixture(args.data, model.tokenizer, args.max_length, args.on_error, config.seed)
            data = {"data": list(args.data), "max_length": args.max_length, "on_error": args.on_error}
            training = True
            result = train(model, dataset, config, resume=not args.no_resume, parallel=parallel, data=data)
    except KeyboardInterrupt:
        if not training:
            raise
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

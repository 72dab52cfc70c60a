"""Option groups that several commands share, and their translation into the library's option objects.

Only argparse is imported at module level, so ``cometlm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


# The options that describe an untrained CoMeT (CometConfig's fields); an adapter brings its own. The integer
# ones pass to CometConfig under their own names; the others are translated by ``model_options``.
INTEGER_SIZES = ("chunk_size", "global_slots", "temp_stride", "temp_capacity", "adapter_rank")
SIZE_OPTIONS = INTEGER_SIZES + ("no_gate", "attention_sink", "gate_bias")


def add_model_options(parser: argparse.ArgumentParser, dtype: str = "auto", default_adapter: bool = False) -> None:
    """--model, --comet, the CoMeT sizes of an untrained model, --dtype (default ``dtype``), --threads (see
    ``model_options``). ``default_adapter``: the command loads ``bundled.DEFAULT_ADAPTER`` when none of --model,
    --comet and the sizes is given (``use_default_adapter``); otherwise CoMeT starts untrained without --comet."""
    from cometlm.bundled import DEFAULT_ADAPTER, shipped_adapters

    without = (f"Without it, --model and the sizes below, the adapter {DEFAULT_ADAPTER.name} is loaded; with "
               "--model or a size and no --comet, CoMeT starts untrained (identity adapters) on --model"
               if default_adapter else "Without it, CoMeT starts untrained (identity adapters) on --model")
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=None,
        help="base model: the bundled 'smollm2-135m-instruct' (default) or a local Hugging Face model directory",
    )
    group.add_argument(
        "--comet", default=None, metavar="DIR|NAME",
        help="a saved CoMeT model or adapter (from save_pretrained), or the name of an adapter shipped with cometlm "
        f"({', '.join(shipped_adapters())}); it brings its own sizes, so the size options below are refused with "
        f"it. {without}",
    )
    group.add_argument("--chunk-size", type=int, default=None, help="C: text tokens per chunk (default 1024)")
    group.add_argument("--global-slots", type=int, default=None,
                       help="M: global-memory slots, 0 disables it (default 64)")
    group.add_argument("--temp-stride", type=int, default=None,
                       help="s: a beacon after every s tokens, 0 disables the temporary memory (default 8)")
    group.add_argument("--temp-capacity", type=int, default=None,
                       help="K: rows in each layer's temporary queue (default 256)")
    group.add_argument("--adapter-rank", type=int, default=None, help="r: rank of the memory adapters (default 8)")
    group.add_argument("--no-gate", action="store_true", help="make the global update a plain overwrite (ablation)")
    group.add_argument(
        "--attention-sink", action="store_true",
        help="put one learned sink row (initialised as BOS) at position 0 of every chunk, ahead of the memory rows",
    )
    group.add_argument(
        "--gate-bias", type=float, nargs=2, default=None, metavar=("FIRST", "LAST"),
        help="initial gate bias of the first and last layer, linear in between (e.g. 0 6: layers keep their global "
        "memory from ~2 to ~400 chunks at the start of training); default: PyTorch's small random bias",
    )
    group.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16"), default=dtype,
        help="the backbone's dtype; auto: bfloat16 where the hardware computes it natively (CPUs with AMX or "
        "AVX512-BF16, Arm BF16, GPUs), else float32. CoMeT's gate, blend and global state stay float32 "
        f"(default {dtype})",
    )
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def sizes_given(args: argparse.Namespace) -> list[str]:
    """The size options of an untrained CoMeT that the command line set, as they are spelled there."""
    return ["--" + name.replace("_", "-") for name in SIZE_OPTIONS if getattr(args, name) not in (None, False)]


def use_default_adapter(args: argparse.Namespace, adapter: Path | None = None) -> bool:
    """--comet becomes ``adapter`` (by default ``bundled.DEFAULT_ADAPTER``) when none of --model, --comet and the
    sizes is given (the trained memory, not an untrained one that disturbs the backbone); True when it did."""
    from cometlm.bundled import DEFAULT_ADAPTER

    if args.comet is not None or args.model is not None or sizes_given(args):
        return False
    args.comet = str(DEFAULT_ADAPTER if adapter is None else adapter)
    return True


def model_options(args: argparse.Namespace):
    """The ``loading.ModelOptions`` that the model options of ``args`` name."""
    from cometlm.config import CometConfig
    from cometlm.loading import ModelOptions

    given = sizes_given(args)
    if args.comet and given:
        raise SystemExit(f"error: --comet {args.comet} brings its own sizes; drop {', '.join(given)} (the sizes of "
                         "an untrained CoMeT), or drop --comet to train or run an untrained memory")
    config = CometConfig()
    if not args.comet:
        sizes = {name: getattr(args, name) for name in INTEGER_SIZES if getattr(args, name) is not None}
        config = CometConfig(**sizes, gate=not args.no_gate, attention_sink=args.attention_sink,
                             gate_bias=tuple(args.gate_bias) if args.gate_bias else None)
        if config.temp_stride == 0 and args.temp_capacity is None:
            config = dataclasses.replace(config, temp_capacity=0)
    return ModelOptions(base=args.model, adapter=args.comet, config=config, dtype=args.dtype, threads=args.threads)


def load_model(args: argparse.Namespace):
    """The model the options name (``loading.load_model``); the command line reads text, so it needs a tokenizer."""
    from cometlm.loading import load_model as load

    model = load(model_options(args))
    if model.tokenizer is None:
        raise SystemExit("error: the model directory has no tokenizer; the command line needs one to read text")
    return model


def number_type(kind, low: float, high: float | None = None, low_open: bool = False):
    """An argparse type: ``kind`` (int or float) within [low, high] (``low_open``: above low), so that a bad
    setting fails when the command line is read, not after the model has loaded and read the prompt."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if (not math.isfinite(value) or value < low or (low_open and value == low)
                or (high is not None and value > high)):
            bounds = f"{'above' if low_open else 'at least'} {low:g}"
            bounds += "" if high is None else f" and at most {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds} (got {text})")
        return value

    return parse


def add_generation_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=number_type(int, 0), default=max_new_tokens,
                       help=f"tokens to generate (default {max_new_tokens})")
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=number_type(float, 0, low_open=True), default=None,
                       help="sampling temperature (with --do-sample; default: the model's generation_config, else 1)")
    group.add_argument("--top-k", type=number_type(int, 0), default=None,
                       help="keep only the k most likely tokens (with --do-sample; 0 keeps all; default: the "
                            "model's generation_config, else 50, as in Hugging Face)")
    group.add_argument("--top-p", type=number_type(float, 0, 1, low_open=True), default=None,
                       help="nucleus sampling mass (with --do-sample; default: the model's generation_config, "
                            "else 1)")
    group.add_argument("--repetition-penalty", type=number_type(float, 0, low_open=True), default=None,
                       help="HF repetition penalty (>1 discourages repeats)")
    group.add_argument("--seed", type=int, default=0, help="random seed for sampling, and for the demo's key and depth (default 0)")

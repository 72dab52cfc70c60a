"""`cometlm lm-eval ...`: lm-evaluation-harness's own command line, with the cometlm backend registered.

The installed `cometlm-lm-eval.pth` hook (src/_cometlm_lm_eval.py) already makes the harness's `lm_eval` script
see `--model cometlm`; this command is the same run with `--model cometlm` filled in, and it imports the backend
itself, so it also works where site-packages' .pth files are not run (`python -S`, some embedded interpreters).
Only argparse is imported until the command runs, so `cometlm --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

INSTALL_HINT = "lm-eval is not installed: pip install 'cometlm[eval]' (or: pip install lm-eval)"


def register(subparsers) -> None:
    """Adds `lm-eval` to the `cometlm` subcommands (argparse's `add_subparsers()` object)."""
    # prefix_chars="+": every "-"/"--" argument is the harness's, so all of them land in harness_args.
    harness = subparsers.add_parser(
        "lm-eval", add_help=False, prefix_chars="+",
        help="run lm-evaluation-harness on a CoMeT model (--model cometlm); takes the harness's own arguments",
        description="lm-evaluation-harness with the cometlm backend registered. Example: cometlm lm-eval --model "
        "cometlm --model_args comet=DIR,layout=primed --tasks hellaswag --device cpu --output_path runs/lm-eval. "
        "--model cometlm is added when no --model is given; `cometlm lm-eval --help` shows the harness's help.",
    )
    harness.add_argument(
        "harness_args", nargs=argparse.REMAINDER,
        help="arguments for lm-eval (lm_eval --help lists them); model arguments go in --model_args, see "
        "cometlm.evaluation.harness",
    )
    harness.set_defaults(run=cmd_lm_eval)


def harness_argv(args: list[str]) -> list[str]:
    """The harness's argv: `--model cometlm` added to an evaluation run that names no model."""
    args = list(args)
    helping = any(a in ("-h", "--help") for a in args) or (args[:1] and args[0] in ("ls", "validate"))
    if args and not helping and not any(a == "--model" or a.startswith("--model=") for a in args):
        start = 1 if args[0] == "run" else 0
        args[start:start] = ["--model", "cometlm"]
    return args


def cmd_lm_eval(args) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise SystemExit(f"error: {INSTALL_HINT}") from None
    import cometlm.evaluation.harness  # noqa: F401  (registers --model cometlm)

    saved = sys.argv
    sys.argv = ["lm-eval", *harness_argv(args.harness_args)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0

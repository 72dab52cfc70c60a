"""`cometlm eval`: the evaluation tasks on the command line, with the options they share.

Every task takes the same method options (`--method`, `--window`, `--sink-tokens`, and for tasks that answer
prompts `--layout`, `--prime-tokens`), the same model options as `generate`, `--out` and `--no-progress`.
Only argparse is imported here, so `cometlm --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from cometlm.evaluation.methods import (
    DEFAULT_PRIME_TOKENS,
    DEFAULT_SINK_TOKENS,
    DEFAULT_WINDOW,
    LAYOUTS,
    MEMORY_METHODS,
    METHOD_HELP,
    METHODS,
    READ_BLOCK,
)


def register(subparsers) -> None:
    """Adds `eval` and its tasks to the `cometlm` subcommands (argparse's `add_subparsers()` object)."""
    from cometlm.evaluation import niah, passkey, ppl, scrolls, table

    evaluate = subparsers.add_parser(
        "eval", help="evaluate long-context reading (passkey, needle, perplexity, SCROLLS) and tabulate results",
        description="Evaluations that write JSON results and a figure to a folder; long runs resume. Every task "
        "takes --method to compare CoMeT with the baselines on the same backbone.",
    )
    tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    for module in (passkey, niah, ppl, scrolls, table):
        module.register(tasks)


def default_out_dir(task: str, method: str, layout: str | None) -> Path:
    """runs/TASK/METHOD-LAYOUT for the CoMeT methods when the layout matters, runs/TASK/METHOD otherwise."""
    name = f"{method}-{layout}" if method in MEMORY_METHODS and layout else method
    return Path("runs") / task / name


def add_common_options(parser, task: str, layouts: bool) -> None:
    """The method, output and model options every task takes."""
    from cometlm.cli import _add_model_options

    group = parser.add_argument_group("method")
    group.add_argument("--method", choices=METHODS, default="comet", help=METHOD_HELP)
    group.add_argument("--window", type=int, default=None,
                       help="tokens the backbone attends to: for full and truncated (answer included) the default "
                       f"is the backbone's max_position_embeddings (else {DEFAULT_WINDOW}); for sliding-window, the "
                       f"recent tokens kept after the sinks, default that window less the sinks and one {READ_BLOCK}-"
                       "token read block")
    group.add_argument("--sink-tokens", type=int, default=DEFAULT_SINK_TOKENS,
                       help=f"first tokens sliding-window always keeps as attention sinks (default {DEFAULT_SINK_TOKENS})")
    if layouts:
        group.add_argument("--layout", choices=LAYOUTS, default="primed",
                           help="chunking of the prompt for comet and no-memory. primed (default): the open chunk the "
                           "answer is generated in holds the question, up to --prime-tokens context tokens before it "
                           "and room for the answer; fixed: chunks of --chunk-size from the start, as generate does")
        group.add_argument("--prime-tokens", type=int, default=DEFAULT_PRIME_TOKENS,
                           help=f"context tokens before the question in the open chunk with --layout primed "
                           f"(default {DEFAULT_PRIME_TOKENS})")
    where = "runs/{task}/METHOD-LAYOUT for comet and no-memory, else runs/{task}/METHOD" if layouts else "runs/{task}/METHOD"
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"results folder (default: {where.format(task=task)}); a folder holding results of "
                        "other settings is refused")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_model_options(parser)

"""The ``cometlm`` command line: one module per command, each with ``register(subparsers)`` and the function it
runs. Commands only call the library's public functions; the library never imports this package. Heavy imports
happen inside the commands, so ``cometlm --help`` is instant.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import demo, eval, generate, lm_eval, serve, train

COMMANDS = (generate, demo, train, eval, lm_eval, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cometlm",
        description="CoMeT: read inputs of any length with a pre-trained LLM at constant memory and linear time.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command. Bad input (a ValueError, a file that cannot be read or written, a loss that is no longer a
    number) and Ctrl-C end with one line instead of a traceback; COMETLM_DEBUG=1 shows the traceback."""
    import os

    args = build_parser().parse_args(argv)
    previous = None
    if args.command in TERM_AS_CTRL_C and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.run(args)
    except (ValueError, OSError, RuntimeError, ArithmeticError) as err:
        if os.environ.get("COMETLM_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("COMETLM_DEBUG"):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# Commands that write results as they go and bring their files up to date when stopped: SIGTERM (a scheduler's or a
# container's stop) ends them as Ctrl-C does. `train` keeps its own handlers (the step in progress is finished
# first); `serve` has uvicorn's.
TERM_AS_CTRL_C = ("eval", "lm-eval", "generate", "demo")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())

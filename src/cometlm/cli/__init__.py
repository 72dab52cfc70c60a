"""The ``cometlm`` command line: one module per command, each with ``register(subparsers)`` and the function it
runs. Commands only call the library's public functions; the library never imports this package. Heavy imports
happen inside the commands, so ``cometlm --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

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


if __name__ == "__main__":
    sys.exit(main())

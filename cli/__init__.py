"""The ``eagle`` command line: one module per command, each with ``add_parser(commands)`` and ``run(args)``.

    eagle init --preset eagle-x5-tiny --output eagle-tiny      # random, Hub-ready folder
    eagle generate --model eagle-tiny --image cat.png --prompt "What is in the picture?"
    eagle quickstart                                           # train, evaluate and serve eagle-x5-small
    eagle search-experts --quickstart                          # the paper's round-robin search for the experts

Building the parser imports no torch or transformers: a command imports what it needs when it runs. Paths given
on the command line are relative to the working directory. A user error (a missing file, a bad preset, an existing
output) prints one line saying what is wrong and what to do, and exits with status 2; ``--debug`` shows the
traceback instead.
"""

import argparse
import sys

from . import bench, convert, data, demo, eval, generate, init, push, quickstart, search_experts, serve, train
from .common import UserError

COMMANDS = (init, generate, convert, train, quickstart, search_experts, eval, data, push, demo, serve, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle",
        description="Hub-native Eagle: a mixture-of-vision-experts multimodal LLM. Build, run and ship Eagle models.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from eagle_hub.training import quiet_bitsandbytes_cpu_warning

    quiet_bitsandbytes_cpu_warning()
    try:
        args.run(args)
    except (UserError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as error:
        # Bad input (files, configs, recipes, images, prompts) is reported in one line; the library's own errors
        # are ValueErrors that name the input. Anything else is a bug and keeps its traceback.
        if args.debug:
            raise
        message = " ".join(str(error).split())
        print(f"eagle {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


__all__ = ["UserError", "build_parser", "main"]

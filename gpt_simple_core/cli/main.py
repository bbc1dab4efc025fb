"""``gpt-simple``: the command-line entry point.

Importing this module (and running ``--help`` or ``--dry-run``) imports no heavy runtime;
backends import theirs when a model of theirs loads.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from gpt_simple_core import __version__, logs
from gpt_simple_core.cli import (
    backends_cmd,
    batch_generate,
    export,
    generate,
    merge,
    score,
    validate,
)
from gpt_simple_core.cli.execute import STOPPED_STATUS
from gpt_simple_core.engine.stop import StopRequested
from gpt_simple_core.errors import GptSimpleError
from gpt_simple_core.exit_codes import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_TERMINATED,
)
from gpt_simple_core.output.spool import OutputFailed
from gpt_simple_core.registry import Registry

EXIT_CODES_HELP = """\
exit status:
  0    every record completed
  1    the run finished, but some records carry an "error" (see the output)
  2    invalid command line, config, input file or checkpoint: nothing was loaded
  70   internal error (a bug: please report it with the traceback)
  74   the output could not be written (disk full, I/O error): its records so far are kept
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM); 138 stopped by SIGUSR1 or
       --max-runtime: finished records are kept; run again with --resume (docs/cli.md)
"""

COMMANDS = (generate, batch_generate, score, merge, validate, backends_cmd, export)


def add_log_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--log-format`` and ``--log-level``, on the main parser (with the defaults) and on
    every command: people add flags at the end of a command line, and
    ``gpt-simple generate ... --log-level debug`` should work as well as the flag placed
    before the command. A command's copy has no default (``SUPPRESS``), so it only overrides
    the main parser's value when it is given."""
    group = parser.add_argument_group("logging (stderr)") if not defaults else parser
    group.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console" if defaults else argparse.SUPPRESS,
        help="stderr log format (default: console)",
    )
    group.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        default="info" if defaults else argparse.SUPPRESS,
        help="stderr log level (default: info)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-simple",
        description="Run trained GPT-style checkpoints. Output is JSONL on stdout; logs and "
        "progress go to stderr.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gpt-simple {__version__}")
    add_log_options(parser, defaults=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = command.add_parser(subparsers)
        add_log_options(sub, defaults=False)
        sub.epilog = EXIT_CODES_HELP
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.set_defaults(handler=command.run)
    return parser


def _exit_quietly_on_broken_pipe() -> int:
    # `gpt-simple ... | head` closes stdout early: that is the reader's choice, not an error.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, registry: Registry | None = None) -> int:
    """Run ``gpt-simple ARGV``; ``registry`` replaces the installed plugins (for embedding and
    tests). Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        return args.handler(args, registry or Registry.discover())
    except GptSimpleError as exc:
        print(f"gpt-simple: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except StopRequested as exc:  # a signal before or after the run itself
        print(f"gpt-simple: stopped ({exc.reason})", file=sys.stderr)
        return STOPPED_STATUS.get(exc.reason, EXIT_TERMINATED)
    except OutputFailed as exc:
        print(
            f"gpt-simple: error: {exc}; the output keeps every record before the failure "
            f"(make room, then run again with --resume)",
            file=sys.stderr,
        )
        return EXIT_OUTPUT
    except KeyboardInterrupt:
        print("gpt-simple: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _exit_quietly_on_broken_pipe()
    except Exception:
        traceback.print_exc()
        print("gpt-simple: internal error (a bug; please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # python -m gpt_simple_core.cli.main
    sys.exit(main())

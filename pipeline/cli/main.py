"""The `vidpipe` command: run, subscribe, bench, build-engine, inspect, cluster."""

from __future__ import annotations

# Only light imports here: the signal handlers go in before anything slow (main), and
# `vidpipe --help` must not pay for numpy, PyAV or ONNX Runtime.
import os
import sys
from typing import TYPE_CHECKING

from engines.errors import VidpipeError
from pipeline.cli.exits import EXIT_INTERRUPTED, EXIT_USER_ERROR
from pipeline.runtime import interrupts
from stages.redact import printable, redact

if TYPE_CHECKING:
    import argparse

# Each command: its help, and the module whose `register(sub, name, help)` adds its arguments
# and sets `func` (imported only when the command is the one being run).
COMMANDS = {
    "run": ("pipeline.cli.run", "run the pipeline over video files or RTSP URLs"),
    "bench": ("pipeline.cli.bench", "measure each stage alone and the whole pipeline"),
    "subscribe": ("pipeline.cli.subscribe", "print results from Redis Streams as they arrive"),
    "build-engine": ("pipeline.cli.engine", "prepare an ONNX model for fp16/int8 and build a TensorRT engine"),
    "inspect": ("pipeline.cli.engine", "describe an ONNX model or a TensorRT engine"),
    "cluster": (
        "pipeline.cluster.cli",
        "run the config's sources over a Ray cluster (start, status, add, remove, stop)",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; given a `command`, only its arguments are built (and its modules imported)."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(prog="vidpipe", description=__doc__)
    log_help = "DEBUG, INFO, WARNING (default) or ERROR"
    parser.add_argument("--log-level", default="WARNING", help=log_help)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).register(sub, name, help)
        else:
            sub.add_parser(name, help=help)
    for command_parser in sub.choices.values():  # also after the command: `vidpipe run --log-level INFO`
        command_parser.add_argument("--log-level", default=argparse.SUPPRESS, help=log_help)
    return parser


def _command(argv: list[str]) -> str:
    """The command named on the command line ("" for none: `vidpipe --help` builds no command's arguments)."""
    return next((a for a in argv if a in COMMANDS), "")


def main(argv: list[str] | None = None) -> int:
    """`vidpipe`: exit 0, 1 (unbalanced ledger: a bug), 2 (user error: bad input, config or a
    failed output), 3 (worker restart budget spent), 128 + signal (130 Ctrl-C, 143 SIGTERM).

    `run`, as the process itself (argv None), ends with os._exit once everything is written,
    so that threads stuck in native calls (a hung inference) never keep it alive.
    """
    args = sys.argv[1:] if argv is None else argv
    process = interrupts.Interrupts()
    if _command(args) == "run":  # the other commands keep Python's handlers (KeyboardInterrupt)
        process.install()  # first: before any slow import
        interrupts.current = process
    try:
        code = _main(args, process)
    finally:
        if argv is not None:
            interrupts.current = None
            process.uninstall()
    if argv is None and interrupts.current is process:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(_final_code(code, process))
    return code


def _final_code(code: int, process: interrupts.Interrupts) -> int:
    """The exit code, counting a signal that came while the last bytes were written: from here
    on signals are blocked, and one still pending counts as if it had come a moment earlier."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, interrupts.SIGNALS)
    pending = [s for s in interrupts.SIGNALS if s in signal.sigpending()]
    signum = process.signum or (pending[0] if pending else None)
    if signum is not None and code in (0, EXIT_INTERRUPTED):
        return 128 + signum
    return code


def _main(argv: list[str], process: interrupts.Interrupts) -> int:
    from pipeline.observability.logs import configure_logging

    try:
        args = build_parser(_command(argv)).parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed
        return done.code if isinstance(done.code, int) else EXIT_USER_ERROR
    configure_logging(args.log_level)
    try:
        code = args.func(args)
    except VidpipeError as err:
        print(f"vidpipe: error: {printable(redact(str(err)))}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:  # the commands other than `run` keep Python's handler
        print("vidpipe: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if process.exit_code is not None and code in (0, EXIT_INTERRUPTED):
        code = process.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())

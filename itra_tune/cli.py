"""Command-line conventions shared by ``itra_tune.train`` and ``itra_tune.search``.

Exit codes: 0 success, 1 the run itself failed, 2 bad input. Bad input is one line on stderr naming the
problem and the fix, with no traceback, and it is detected before anything is written.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from itra_tune.config import ConfigError, did_you_mean

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def choice(what: str, values: Sequence[str]) -> Callable[[str], str]:
    """An argparse ``type`` taking one of ``values``; a typo gets the closest one named (``--scheduler ashaa``)."""

    def parse(text: str) -> str:
        if text in values:
            return text
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}{did_you_mean(text, values)}; choose from "
                                         f"{', '.join(values)}")

    return parse


def run(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``, turning ConfigError (and a missing extra) into one line and exit 2, and Ctrl-C into
    exit 130."""
    try:
        return main(argv)
    except SystemExit as e:  # argparse: --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as e:  # a part of an extra that is not installed: name the extra
        from itra_tune import extras

        missing = extras.missing(e, prog)
        if missing is None:
            raise
        print(f"{prog}: error: {missing}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def exit_now(code: int) -> NoReturn:
    """End the process with ``code``: the exit handlers run and the streams are flushed, then the interpreter's
    teardown is skipped (after a search, seconds of collecting objects that the process is about to drop)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def command(tool: str = "python") -> str:
    """How to call ``tool`` of this interpreter's environment (``python``, ``mlflow``, ...) in a hint that works
    when pasted: the environment's own ``bin`` folder, relative to the working folder when inside it."""
    path = Path(sys.executable) if tool == "python" else Path(sys.executable).parent / tool
    try:
        rel = path.relative_to(Path.cwd())
        return str(rel) if str(rel).startswith(".") or os.sep in str(rel) else f".{os.sep}{rel}"
    except ValueError:
        return str(path)

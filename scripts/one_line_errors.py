"""Bad input to a script leaves as it does from `marginbench`: one line on stderr, exit 2,
no traceback and no usage block (argparse's own error prints its usage line first)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from marginbench.errors import MarginbenchError


def print_error(name: str, message: str) -> None:
    """The one error line on stderr; ``name`` (the script's) is its prefix."""
    print(f"{name}: error: {message}", file=sys.stderr)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors (``--n abc``, an unknown flag) are one line, like the
    script's other errors; ``prog`` is the script's name without ``.py``."""

    def __init__(self, prog: str, **kwargs) -> None:
        super().__init__(prog=prog, **kwargs)

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print_error(self.prog, f"{message}; see `python scripts/{self.prog}.py --help`")
        raise SystemExit(2)


def run_main(main_function: Callable[[], int], name: str) -> int:
    """A MarginbenchError (bad input found by the script's checks) as one line, exit status 2."""
    try:
        return main_function()
    except MarginbenchError as error:
        print_error(name, str(error))
        return 2

"""What every stage entry point shares: its command line, logging, params and exit status.

A stage module is thin (DVC's example-get-started): its docstring is its help, `main(argv)` reads the
params through the contract (`pipelines.params.load`) and calls one library function, and

    if __name__ == "__main__":
        cli(main)

runs it. The return convention: `main` returns the exit status, 0 when the stage succeeded, 1 when its
library raised `StageFailed` (the outputs are written; the message says which policy failed), or
failed on a file whose digest does not verify or on what the operating system refused (a full disk,
a read-only output folder, a missing input: one line naming the path and the cause, `finish`); the
partial outputs of such a run are removed by the next one. A
params mistake raises `ParamsError` out of `main` before any work; `cli` prints it without a
traceback and exits with 2. Loggers are named after their modules (``logging.getLogger(__name__)``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

from pipelines.errors import IntegrityError, StageFailed, cause
from pipelines.params import Params, ParamsError, load

log = logging.getLogger(__name__)


def parse_args(doc: str | None, argv: list[str] | None, *, paths: dict[str, Path] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The stage's arguments: ``--params`` (default params.yaml or $VLM2VEC_PARAMS), one ``--<name>``
    option per entry of `paths` (defaults: the DVC layout of dvc.yaml), and what `extra` adds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml)")
    for name, default in (paths or {}).items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, default=default,
                            help=f"default: {default}")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def start(doc: str | None, argv: list[str] | None, **kwargs) -> tuple[argparse.Namespace, Params]:
    """Parse the arguments, set up logging, load and check the params: the first lines of every
    stage's `main`."""
    args = parse_args(doc, argv, **kwargs)
    setup_logging()
    return args, load(args.params)


def finish(name: str, work: Callable[[], object], writing: Iterable[Path] = ()) -> int:
    """Run the stage's library call; 0, or 1 with one message on stderr when it raised StageFailed,
    when a file's digest did not verify (`IntegrityError`), or when the operating system refused
    (`pipelines.errors.cause`: a full disk, a read-only or forbidden folder, a missing input; a write
    error that names no file names `writing`, the stage's outputs, with their free space). The
    traceback of the last two goes to the debug log (LOGLEVEL=DEBUG); any other error is raised."""
    try:
        work()
    except StageFailed as e:
        return _failed(name, str(e))
    except Exception as e:
        message = str(e) if isinstance(e, IntegrityError) else cause(e, writing)
        if message is None:
            raise
        log.debug("%s failed", name, exc_info=True)
        return _failed(name, message)
    return 0


def _failed(name: str, message: str) -> int:
    log.error("%s failed:\n%s", name, message)
    print(f"{name}: FAILED\n{message}", file=sys.stderr)
    return 1


def cli(main: Callable[[list[str] | None], int]) -> None:
    """``python -m stages.<name>``: exit with `main`'s status; a params mistake prints its message
    (every problem, each naming its key) and exits with 2."""
    try:
        status = main(None)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 2
    raise SystemExit(status)

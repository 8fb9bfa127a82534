"""The click group and the error handling every sub-command shares."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from clipindex import __version__
from clipindex.errors import ClipindexError, os_fault


class _Warnings(logging.Handler):
    """clipindex's warnings (a discarded cache, a fallback) as one ``Warning:`` line each
    on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        click.echo(f"Warning: {text}", err=True)


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    logger = logging.getLogger("clipindex")
    handler = _Warnings(level=logging.WARNING)
    old = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # printed once, not again by a root handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = old


class _Group(click.Group):
    """A group that prints clipindex's own errors as one line and exits with 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _warnings_to_stderr():
                return super().invoke(ctx)
        except ClipindexError as exc:
            click.echo(f"Error: {' '.join(str(exc).split())}", err=True)
            sys.exit(2)
        except click.UsageError as exc:
            # click would print three lines (usage, hint, error); keep it to one.
            where = exc.ctx.command_path if exc.ctx is not None else "clipindex"
            message = " ".join(exc.format_message().split())
            click.echo(f"Error: {message} (see `{where} --help`)", err=True)
            sys.exit(2)
        except OSError as exc:  # a fault of the machine the library did not name itself
            fault = os_fault(exc)
            if fault is None:
                raise
            click.echo(f"Error: {' '.join(str(fault).split())}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished shards are kept and a rerun resumes.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clipindex")
def main() -> None:
    """clipindex: encode images and captions once per CLIP backbone into FAISS
    indexes, then classify, search and benchmark from the store.

    \b
    Typical session on the bundled demo world:
      clipindex world worlds/demo              # synthetic COCO-format data
      clipindex build demo --root worlds/demo \\
          --backbone tiny-vit --backbone tiny-rn
      clipindex classify --index indexes/demo --backbone tiny-vit --method prompt
    """
    if not sys.stderr.isatty():  # CI logs, `> log 2>&1`: a line every few seconds
        from clipindex.progress import use_line_progress

        if use_line_progress():  # for this command's bars only
            click.get_current_context().call_on_close(lambda: use_line_progress(False))


def echo_err(message: str) -> None:
    """Print a note to stderr (stdout is kept for tables and JSON)."""
    click.echo(message, err=True)

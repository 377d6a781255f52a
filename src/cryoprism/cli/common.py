"""Shared CLI plumbing: figures for people or as one JSON object, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import logging
import sys

import typer

JSON_OPTION = typer.Option(False, "--json", help="Print the figures as one JSON object on stdout.")


def emit(figures: dict, as_json: bool, human: str | None = None) -> None:
    """Print ``figures`` as JSON (``--json``) or ``human`` text (default: key: value lines)."""
    if as_json:
        from cryoprism.io.job import jsonable

        sys.stdout.write(json.dumps(jsonable(figures)) + "\n")
        return
    if human is None:
        human = "\n".join(f"{k}: {v}" for k, v in figures.items() if not isinstance(v, (list, dict)))
    typer.echo(human)


def finish(job, as_json: bool, human: str | None = None) -> dict:
    """``job.finish()`` (summary written to OUT/summary.json) and print it with :func:`emit`."""
    summary = job.finish()
    emit(summary, as_json, human)
    return summary


def split_output(out, default_name: str, suffixes=(".mrc", ".map")):
    """``-o OUT``: a folder (outputs named ``default_name`` etc. inside), or a file name with one of
    ``suffixes`` (its folder holds the job). Returns ``(folder, file name)``."""
    from pathlib import Path

    out = Path(out)
    if out.suffix.lower() in suffixes:
        return out.parent, out.name
    return out, default_name


def fail(message: str, code: int = 2):
    """Print one line on stderr and exit (code 2 for bad input)."""
    typer.echo(f"cryoprism: error: {message}", err=True)
    raise typer.Exit(code)


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (looked up at each record, so redirections apply)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter("%(message)s"))


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Level of the ``cryoprism`` logger: INFO (``-vv``: DEBUG, ``-q``: WARNING); its messages appear on
    stderr from WARNING up (``-v``: from the logger's level), so an error stays one line."""
    log = logging.getLogger("cryoprism")
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    log.setLevel(level)
    _HANDLER.setLevel(level if verbose else logging.WARNING)
    if _HANDLER not in log.handlers:
        log.addHandler(_HANDLER)

"""Shared CLI plumbing: figures for people or as one JSON object, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import numpy as np
import typer

JSON_OPTION = typer.Option(False, "--json", help="Print the figures as one JSON object on stdout.")


def _jsonable(x: Any):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        x = float(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def emit(figures: dict, as_json: bool, human: str | None = None) -> None:
    """Print ``figures`` as JSON (``--json``) or ``human`` text (default: key: value lines)."""
    if as_json:
        sys.stdout.write(json.dumps(_jsonable(figures)) + "\n")
        return
    if human is None:
        human = "\n".join(f"{k}: {v}" for k, v in figures.items() if not isinstance(v, (list, dict)))
    typer.echo(human)


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


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Messages of the ``cryoprism`` logger on stderr: level INFO, DEBUG with ``-v``, WARNING with ``-q``."""
    log = logging.getLogger("cryoprism")
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if _HANDLER not in log.handlers:
        log.addHandler(_HANDLER)

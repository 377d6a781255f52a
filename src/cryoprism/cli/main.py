"""The ``cryoprism`` command. Each area registers its commands from its own module in this package."""

from __future__ import annotations

import sys

import typer

from cryoprism import __version__

app = typer.Typer(
    name="cryoprism",
    help="Cryo-EM single-particle analysis. Reads and writes RELION STAR + MRC (and reads cryoSPARC .cs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"cryoprism {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    scheduler: str = typer.Option(None, "--scheduler",
                                  help="dask.distributed scheduler address (tcp://host:8786) to run "
                                       "particle passes on a cluster; default: CRYOPRISM_SCHEDULER, else "
                                       "this machine."),
    workers: int = typer.Option(None, "--workers", min=1,
                                help="Local worker threads (default: CRYOPRISM_WORKERS, else all CPUs "
                                     "available)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="Progress messages on stderr (-v: level INFO, -vv: DEBUG; default: "
                                     "warnings only; OUT/job.log holds the INFO messages unless -q)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Level WARNING (also in OUT/job.log) and no progress bars."),
):
    """Cryo-EM single-particle analysis."""
    from cryoprism.cli.common import configure_logging
    from cryoprism.parallel.config import configure, reset

    reset()  # each invocation starts from the documented defaults
    changes = {"progress": not quiet}
    if scheduler:
        changes["scheduler"] = scheduler
    if workers:
        changes["workers"] = workers
    configure(**changes)
    configure_logging(verbose=verbose, quiet=quiet)


# One module per area; each defines register(app).
_AREAS = [
    "io_cmds", "image_cmds", "metrics_cmds", "forward_cmds", "reconstruct_cmds", "heterogeneity_cmds",
    "classify2d_cmds", "abinitio_cmds", "micrograph_cmds", "pipeline_cmds", "postprocess_cmds", "preprocess_cmds",
    "pick_cmds", "refine_cmds",
]
for _name in _AREAS:
    __import__(f"cryoprism.cli.{_name}", fromlist=["register"]).register(app)


def _reflow(doc: str) -> str:
    """A docstring as help text that the terminal reflows: the lines of each paragraph joined (typer
    keeps the hard line breaks of every paragraph but the first)."""
    import inspect

    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


for _cmd in app.registered_commands:
    if _cmd.help is None and _cmd.callback is not None and _cmd.callback.__doc__:
        _cmd.help = _reflow(_cmd.callback.__doc__)


def main(argv=None) -> int:
    """Entry point: bad input (InputError, missing files, malformed data) → one line, exit code 2."""
    from cryoprism.errors import InputError

    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and not isinstance(rc, bool):  # typer returns Exit codes (130 on Ctrl-C)
            if rc == 130:
                typer.echo("cryoprism: interrupted", err=True)
            return rc
    except SystemExit as e:  # typer.Exit inside standalone_mode=False
        return int(e.code or 0)
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except (InputError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        msg = str(e) if isinstance(e, InputError) else f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}"
        typer.echo(f"cryoprism: error: {msg}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("cryoprism: interrupted", err=True)
        return 130
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Abort):  # click turns Ctrl-C into Abort
            typer.echo("cryoprism: interrupted", err=True)
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``cryoprism demo``: the end-to-end pipeline on data shipped with the package."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoprism.cli.common import JSON_OPTION, emit


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("demo_out"), "--out", "-o",
                                 help="Output folder: maps/, particles/, reconstruct/, heterogeneity/, "
                                      "classify2d/, abinitio/, micrograph/ and report/index.html."),
        particles: int = typer.Option(4000, "-n", help="Number of simulated particles."),
        stages: str = typer.Option(None, "--stages",
                                   help="Comma-separated subset of stages to run: maps, simulate, "
                                        "reconstruct, heterogeneity, classify2d, abinitio, micrograph."),
        as_json: bool = JSON_OPTION,
    ):
        """Simulate a two-state specimen (adenylate kinase open/closed, shipped with cryoprism) and run
        2-D analysis, ab initio, mean reconstruction, heterogeneity with per-class reconstruction and
        micrograph EM on it. Reads nothing; writes OUT (MRC, STAR, CSV, PNG) and OUT/report/index.html."""
        from cryoprism.pipeline.demo import DemoSettings, run_demo

        summary = run_demo(out, DemoSettings(n_particles=particles),
                           stages=stages.split(",") if stages else None)
        failed = [k for k, v in summary["stages"].items() if not v["ok"]]
        figures = {"report": summary["report"], "total_seconds": summary["total_seconds"],
                   "total_cpu_seconds": summary.get("total_cpu_seconds"),
                   "stages": {k: {"ok": v["ok"], "seconds": v["seconds"], "cpu_seconds": v.get("cpu_seconds"),
                                  "error": v["error"]}
                              for k, v in summary["stages"].items()}}
        human = "\n".join([f"{k:14s} {'ok' if v['ok'] else 'FAILED'} {v['seconds']:7.1f} s "
                           f"({v.get('cpu_seconds', 0.0):.1f} CPU-s)"
                           + (f"  {v['error']}" if v["error"] else "")
                           for k, v in summary["stages"].items()]
                          + [f"total          {summary['total_seconds']:.1f} s", f"report: {summary['report']}"])
        emit(figures, as_json, human)
        if failed:
            raise typer.Exit(1)

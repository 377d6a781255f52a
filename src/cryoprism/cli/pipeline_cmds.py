"""``cryoprism demo``: the end-to-end pipeline on data shipped with the package."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoprism.cli.common import JSON_OPTION, emit


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("demo_out"), "--out", "-o",
                                 help="Output folder: maps/, movies/, particles/, reconstruct/, heterogeneity/, "
                                      "classify2d/, abinitio/, refine/, heterogeneity_refined/, micrograph/ and "
                                      "report/index.html."),
        particles: int = typer.Option(4000, "-n", help="Number of simulated particles."),
        stages: str = typer.Option(None, "--stages",
                                   help="Comma-separated subset of stages to run, in this order: maps, movies, "
                                        "simulate, reconstruct, heterogeneity, classify2d, abinitio, refine, "
                                        "heterogeneity_refined, micrograph (later stages read earlier ones' "
                                        "outputs in OUT)."),
        as_json: bool = JSON_OPTION,
    ):
        """Simulate a two-state specimen (adenylate kinase open/closed, shipped with cryoprism) and run
        the library on it: simulated movies (2 × 20 frames of 512², 2.5 Å/px) through motion correction,
        CTF estimation, picking and extraction; then, on 4000 simulated particles (32², 2.5 Å/px), mean
        reconstruction, heterogeneity with per-class reconstruction, 2-D analysis, ab initio, refinement
        from the ab-initio map followed by heterogeneity on the refined poses, and micrograph EM. Reads
        nothing; writes OUT (MRC, STAR, CSV, PNG) and OUT/report/index.html with errors against the
        simulated truth (drift in px, defocus in %, picking precision/recall, angles in degrees, FSC in Å)."""
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

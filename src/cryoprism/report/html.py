"""A self-contained HTML report: sections of text, key figures (tables) and PNG figures."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryoprism.io.atomic import atomic_path

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
font-size:.9em}th{background:#f4f4f4}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figcaption{font-size:.8em;color:#555;max-width:560px}img{max-width:560px;border:1px solid #eee}
.note{color:#555;font-size:.9em}#img-status{display:none;color:#b00}
"""

# Marks the page when every figure has loaded, and shows a warning if one did not.
_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-broken', bad.length);
  if (bad.length) { var s = document.getElementById('img-status'); s.style.display = 'block';
    s.textContent = bad.length + ' figure(s) failed to load'; }
});
"""


@dataclass
class Report:
    """Collect sections, then :meth:`write` ``index.html`` into ``out_dir`` (figures beside it)."""

    out_dir: Path
    title: str = "cryoprism report"
    sections: list = field(default_factory=list)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def section(self, heading: str, text: str = "") -> "Report":
        self.sections.append(("h2", heading, text))
        return self

    def table(self, rows: dict, caption: str | None = None) -> "Report":
        self.sections.append(("table", caption, rows))
        return self

    def figure(self, fig_or_png, name: str, caption: str = "") -> "Report":
        """Add a matplotlib figure (saved as ``name``.png) or an existing PNG path."""
        from cryoprism.report.plots import save

        if isinstance(fig_or_png, (str, Path)):
            src = Path(fig_or_png)
            dst = self.out_dir / src.name
            if src.resolve() != dst.resolve():
                dst.write_bytes(src.read_bytes())
            rel = dst.name
        else:
            rel = f"{name}.png"
            save(fig_or_png, self.out_dir / rel)
        self.sections.append(("fig", rel, caption))
        return self

    def render(self) -> str:
        out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(self.title)}"
               f"</title><style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
               "<p id='img-status'></p>"]
        for kind, a, b in self.sections:
            if kind == "h2":
                out.append(f"<h2>{html.escape(a)}</h2>")
                if b:
                    out.append(f"<p class='note'>{html.escape(b)}</p>")
            elif kind == "table":
                if a:
                    out.append(f"<p><b>{html.escape(a)}</b></p>")
                out.append("<table>")
                for k, v in b.items():
                    if isinstance(v, float):
                        v = f"{v:.4g}"
                    elif not isinstance(v, str):
                        v = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                    out.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v)}</td></tr>")
                out.append("</table>")
            else:
                out.append(f"<figure><img src='{html.escape(a)}' alt='{html.escape(b or a)}'>"
                           f"<figcaption>{html.escape(b)}</figcaption></figure>")
        out.append(f"<script>{_JS}</script></body></html>")
        return "\n".join(out)

    def write(self) -> Path:
        path = self.out_dir / "index.html"
        with atomic_path(path) as tmp:
            tmp.write_text(self.render(), encoding="utf-8")
        return path

"""Reports: shared matplotlib figures and a self-contained HTML page."""

from cryoprism.report.html import Report
from cryoprism.report.plots import (
    fsc_figure,
    gallery_figure,
    histogram_figure,
    save,
    spectrum_figure,
    trace_figure,
    volume_slices_figure,
)

__all__ = ["Report", "fsc_figure", "gallery_figure", "histogram_figure", "save", "spectrum_figure",
           "trace_figure", "volume_slices_figure"]

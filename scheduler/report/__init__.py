"""`continuum report`: the adapter history as a self-contained HTML page plus PNG plots.

    build_report(session, out_dir) → ReportFiles   (reads the database, writes the files)

The page embeds every plot as a base64 PNG, so it can be mailed or archived as one file; the PNGs are
written beside it for slides and issues.
"""

from scheduler.report.build import ReportFiles, build_report
from scheduler.report.data import ReportData, load_report_data
from scheduler.report.plots import Gate

__all__ = ["Gate", "ReportData", "ReportFiles", "build_report", "load_report_data"]

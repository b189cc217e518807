"""A run's self-contained HTML report (inline SVG charts) beside its ``summary.json``."""

from fedcore.report.build import (
    REPORT_FILE,
    ReportError,
    render_html,
    try_write_report,
    write_report,
)

__all__ = ["REPORT_FILE", "ReportError", "render_html", "try_write_report", "write_report"]

"""`rendezvous compare`: a report on the comparison log over a time or offset range.

    ranges.py    --since / --from / --to parsing (before any broker is contacted)
    reader.py    range -> per-partition offsets, reading them in batches into columns
    decode.py    batches of Comparison values into columns: services/core/compiled_decode.py
                 (a compiled loop over a batch), else one fastavro call per batch, else one per record
    columns.py   columnar accumulation (array.array, codes for names)
    summary.py   per-model figures (stats from services/stats/distributions.py)
    table.py     the terminal table (rich)        html.py   the HTML page with inline SVG plots
    settings.py  CompareSettings

Entry points: `report.report_from_topic(settings)` for the CLI, and `summarize_records(records)` for
anything that has Comparison-shaped dicts already (e.g. a replay).
"""

from __future__ import annotations

from services.compare_report.summary import Report, summarize_records

__all__ = ["Report", "summarize_records"]

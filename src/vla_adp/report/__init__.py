"""Reports of run logs: the ``vla-adp report`` tables (:mod:`~vla_adp.report.runs`), the per-method
summary (:mod:`~vla_adp.report.summary`) and what is drawn from it (tables, timelines, trade-off plots)."""

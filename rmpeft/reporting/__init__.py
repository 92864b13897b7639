"""Reporting: from run records to the paper's tables and figures.

Modules, in import order: ``sources`` (records from disk or a wandb project), ``paper`` (labels,
orders, the paper's printed numbers), ``runs`` (a record's facts and table-cell identity),
``aggregate`` (best-LR selection and flags), ``predictor`` (best LR versus masking ratio),
``tables`` and ``render`` (the tables in Markdown, LaTeX, CSV), ``lr_curves`` and ``figures``
(Figures 3 and 4), ``cli`` (``rmpeft-tables``, ``rmpeft-plot``).
"""

"""Analyses of a run beyond its metrics (the paper's Figure 4).

- :mod:`rmpeft.analysis.hessian`: sharpness, the Hessian eigenvalue of largest magnitude with
  respect to the trainable parameters, by power iteration on Hessian-vector products.
- :mod:`rmpeft.analysis.distance`: L2 distance between initial and final trainable parameters.
- :mod:`rmpeft.analysis.hessian_cli`: ``rmpeft-hessian RUN_DIR`` for a saved run.
- :mod:`rmpeft.analysis.figures`: Figure 4 panels for ``rmpeft-plot``.
"""

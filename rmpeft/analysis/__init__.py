"""Analyses of a run beyond its metrics (the paper's Figure 4).

- :mod:`rmpeft.analysis.hessian`: sharpness, the Hessian eigenvalue of largest magnitude with
  respect to the trainable parameters, by power iteration on Hessian-vector products.
- :mod:`rmpeft.analysis.distance`: L2 distance between initial and final trainable parameters.
- :mod:`rmpeft.analysis.sharpness`: the sharpness of a built run, before and after training.

``rmpeft-hessian RUN_DIR`` for a saved run is :mod:`rmpeft.hessian_cli`.
"""

"""A learning rate without a grid search: ``optim.lr=auto`` predicts a run's LR from a few training
batches measured before any update (docs/lr-prediction.md). The pure parts live here:

- :mod:`rmpeft.lr_auto.settings`: the ``optim.lr_auto`` settings and the ``auto`` value;
- :mod:`rmpeft.lr_auto.estimators`: one :class:`~rmpeft.lr_auto.estimators.base.Estimator` per module,
  and the registry :data:`~rmpeft.lr_auto.estimators.ESTIMATORS`;
- :mod:`rmpeft.lr_auto.calibration`: each estimator's constant, fitted per optimizer on known best LRs
  (leave-one-task-out when judged), and the constants shipped with the package;
- :mod:`rmpeft.lr_auto.predict`: quantities -> predicted LR.

Measuring a run is :mod:`rmpeft.analysis.lr_measure`; the commands are ``rmpeft-lr``
(:mod:`rmpeft.lr_cli`), ``rmpeft-lr --evaluate`` (:mod:`rmpeft.reporting.lr_prediction`) and
``rmpeft-sweep FILE lr_grid=auto:K`` (:mod:`rmpeft.sweeps.lr_grid`).
"""

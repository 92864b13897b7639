"""Trained deltas as artifacts: the delta folder format (:mod:`~rmpeft.deltas.format`), the base-model
fingerprint (:mod:`~rmpeft.deltas.base_model`), keeping and exporting a run's delta
(:mod:`~rmpeft.deltas.export`), evaluating one (:mod:`~rmpeft.deltas.evaluate`), merging one into a plain
checkpoint (:mod:`~rmpeft.deltas.merge`) and the commands (:mod:`~rmpeft.deltas.cli`).

Nothing is imported here: the methods import :mod:`rmpeft.deltas.format` while the other modules
import the methods.
"""

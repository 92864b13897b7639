"""Operations on trained deltas: keeping and exporting a run's delta (:mod:`~rmpeft.deltas.export`),
applying one (:mod:`~rmpeft.deltas.apply`), evaluating one (:mod:`~rmpeft.deltas.evaluate`), merging one
into a plain checkpoint (:mod:`~rmpeft.deltas.merge`), peft adapter folders (:mod:`~rmpeft.deltas.peft_export`,
:mod:`~rmpeft.deltas.peft_import`) and the commands (:mod:`~rmpeft.deltas.cli`).

The delta folder format is the methods' own (:mod:`rmpeft.methods.delta_format`,
:mod:`rmpeft.methods.peft_sparse`), the base-model fingerprint the models' (:mod:`rmpeft.base_model`).
Nothing is imported here.
"""

"""Pruning a trained student (kd-orthogonality-ensemble §4), one job per module:
:mod:`~student.pruning.graph` (which layers may lose channels, DepGraph), :mod:`~student.pruning.l1`
(Li et al.), :mod:`~student.pruning.slimming` (Liu et al.), :mod:`~student.pruning.magnitude`
(Han et al.), :mod:`~student.pruning.recipe` (a config recipe applied to a model),
:mod:`~student.pruning.shaping` (what the trainer does differently for these models) and
:mod:`~student.pruning.measure` (parameters, multiply-adds, latency).
"""

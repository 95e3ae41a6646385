"""What a student of each task trains with and is measured by, registered by task name.

``OBJECTIVES[task][objective]`` builds a run's :class:`~student.objectives.Objective`: ``erm``
takes ``(real, plan, *common)``, ``kd`` ``(sets, real or None, kd_cfg, plan, expected_shape,
coverage, *common)``, ``kd_online`` ``(teachers, real, plan, kd_cfg, *common)``, where ``real`` is
the real split as a stream member (:class:`student.stream.RealPart`), ``plan`` the run's stream
and ``common`` is ``(train_cfg, input contract, device, seed, rank)``. ``EVALUATE[task]`` gives the
metrics of a model (or an ensemble) on a held-out split. A task without an entry does not offer that objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from core.sources import Source
from core.tasks import CLASSIFY, REGRESS
from student.evaluate import classification_metrics, predict_probs
from student.objectives import ERMObjective, KDObjective, Objective
from student.online import OnlineKDObjective
from student.regression import RegressionERM, RegressionKD
from student.regression_eval import evaluate_regression

OBJECTIVES: dict[str, dict[str, Callable[..., Objective]]] = {
    CLASSIFY.name: {"erm": ERMObjective, "kd": KDObjective, "kd_online": OnlineKDObjective},
    REGRESS.name: {"erm": RegressionERM, "kd": RegressionKD},
}


def _classifier(models: list[nn.Module], specs: list[dict[str, Any]], split: Source) -> dict[str, Any]:
    return classification_metrics(predict_probs(models, specs, split), split.labels)


def _regressor(models: list[nn.Module], specs: list[dict[str, Any]], split: Source) -> dict[str, Any]:
    return evaluate_regression(models, specs, split, split.out_dim)


EVALUATE: dict[str, Callable[[list[nn.Module], list[dict[str, Any]], Source], dict[str, Any]]] = {
    CLASSIFY.name: _classifier,
    REGRESS.name: _regressor,
}

"""Supervise a set's Ray execution: restart from the committed shards when the cluster fails it.

What fails a generation on a cluster is rarely our code: a node is lost, an actor dies, an
object is lost with its owner, or the execution stops making progress (no capacity left for
the teacher actors, a hung worker). For each of those the cure is the same: end the Ray Data
execution, plan the set again from what is committed (every committed shard is complete and
correct, `pipeline/generate/plan.py`), and make only the missing shards — up to ``max_restarts`` times.

Lost nodes are reported the moment the cluster notices them. Ray Data itself restarts the
actors of a lost node elsewhere and re-runs their shard calls (actor pools have unlimited
restarts), so a node loss usually costs only the shards in flight; when it does not recover
(say the lost node held the only GPU), the execution stalls, Ray Data's no-progress guard
(``ray.stall_timeout_s``) ends it with ``ExecutionTimeoutError``, and the supervisor restarts.

Errors of our own code are not retried: a ``UserError`` raised inside an actor (an unreadable
image, say) crosses the process boundary only as traceback text, so it is recognised there and
raised again as the one-line error it was. One of the three driver modules that import Ray (with
:mod:`pipeline.generate.driver` and :mod:`pipeline.train.ray_train`), inside the functions that use it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core.errors import FormatError, JobFailure, UserError
from core.progress import Progress
from pipeline.generate.plan import SetPlan

NODE_POLL_S = 1.0
# The last line of a remote traceback that names one of our user-facing errors.
REMOTE_USER_ERROR = re.compile(r"^core\.errors\.(?:UserError|FormatError): (.+)$", re.M)


def restartable(err: BaseException) -> str | None:
    """Why a restart could cure ``err`` ('stall', 'node lost', 'actor died', …), or None."""
    from ray import exceptions as rex
    from ray.data.exceptions import ExecutionTimeoutError

    if isinstance(err, ExecutionTimeoutError):
        return "the execution stalled"
    if isinstance(err, rex.UserCodeException):  # raised by our code in a task: deterministic
        return None
    kinds: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        ((rex.NodeDiedError, rex.LocalRayletDiedError), "a node was lost"),
        (rex.RayActorError, "an actor died"),
        (rex.WorkerCrashedError, "a worker crashed"),
        (rex.ObjectLostError, "an object was lost"),
        ((rex.OutOfMemoryError, rex.ObjectStoreFullError), "a node ran out of memory"),
        ((rex.RaySystemError, rex.RpcError, rex.GetTimeoutError), "Ray failed"),
    ]
    for types, reason in kinds:
        if isinstance(err, types):
            return reason
    return None


def remote_user_error(err: BaseException) -> UserError | None:
    """Our ``UserError`` / ``FormatError`` raised inside a Ray task, if that is what ``err`` carries."""
    from ray import exceptions as rex

    if not isinstance(err, rex.RayError):
        return None
    found = REMOTE_USER_ERROR.findall(str(err))
    return UserError(found[-1].strip()) if found else None


def capacity_hint(plan: SetPlan) -> str:
    """What a stalled set's actors ask for against what the cluster has: the usual cause."""
    import ray

    stage = plan.spec.teacher_stage
    have = ray.cluster_resources() if ray.is_initialized() else {}
    if stage.num_gpus > have.get("GPU", 0) or stage.num_cpus > have.get("CPU", 0):
        return (f"; each teacher actor asks for num_cpus={stage.num_cpus:g}, num_gpus={stage.num_gpus:g} and the "
                f"cluster has CPU {have.get('CPU', 0):g}, GPU {have.get('GPU', 0):g}: lower teacher_stage's request "
                f"or add nodes")
    return ""


def _alive_nodes() -> dict[str, str]:
    import ray

    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}


@contextmanager
def watch_nodes(progress: Progress, poll_s: float = NODE_POLL_S) -> Iterator[list[str]]:
    """Report every node that leaves the cluster while the block runs; yields the list of losses."""
    import ray

    lost: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        known: dict[str, str] = {}
        while not stop.wait(poll_s):
            if not ray.is_initialized():
                continue
            try:
                alive = _alive_nodes()
            except Exception:  # noqa: BLE001 — the GCS may be briefly unreachable; try again
                continue
            for node, address in known.items():
                if node not in alive:
                    lost.append(node)
                    progress(f"node {node[:12]} ({address}) left the cluster; Ray re-runs its shard calls "
                             f"elsewhere, and the job restarts from the committed shards if that stalls")
            known = alive

    thread = threading.Thread(target=watch, name="transferset-node-watch", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=2 * poll_s)


def supervise(plan: SetPlan, execute: Callable[[SetPlan], dict[str, Any]], progress: Progress,
              max_restarts: int, replan: Callable[[], SetPlan]) -> dict[str, Any]:
    """Run ``execute(plan)``; on a failure a restart can cure, ``replan()`` and run again.

    Returns the last execution's result with ``restarts`` (how many) and ``nodes_lost`` added.
    """
    from ray.data.exceptions import ExecutionTimeoutError

    restarts = 0
    with watch_nodes(progress) as lost:
        while True:
            began = time.monotonic()
            try:
                result = execute(plan)
                break
            except (UserError, FormatError):
                raise
            except Exception as err:
                mine = remote_user_error(err)
                if mine is not None:
                    raise mine from err
                reason = restartable(err)
                if reason is None:
                    raise
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                if isinstance(err, ExecutionTimeoutError):
                    first += capacity_hint(plan)
                if restarts >= max_restarts:
                    raise JobFailure(
                        f"set {plan.spec.name}: {reason} ({first}); gave up after {restarts} restart(s). Committed "
                        f"shards are kept: run the same command again to resume, or raise --max-restarts") from err
                restarts += 1
                progress(f"set {plan.spec.name}: {reason} after {time.monotonic() - began:.0f} s ({first}); "
                         f"restart {restarts}/{max_restarts} from the committed shards")
                plan = replan()
    return {**result, "restarts": restarts, "nodes_lost": len(lost)}

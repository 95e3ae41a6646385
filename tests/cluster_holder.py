"""A multi-node Ray cluster on this machine for the fault tests, driven over stdin/stdout.

``ray.cluster_utils.Cluster``: a head with no CPUs (it only hosts the GCS, so every actor and
task lands on a worker, like a cluster whose head does no work) and two workers of 2 CPUs, each
with an explicit object store (ENVIRONMENT.md: the default one made node-kill runs hang).

Prints one line ``@@ {"address": …}`` when the cluster is up, then answers commands, one
``@@ <json>`` line each (Ray writes its own notices to stdout too, without the marker):

* ``kill-actor-node``: remove (ungracefully) the worker node that hosts a live generation actor;
  answers ``{"killed": node_id}`` (``null`` while no actor is alive yet).
* ``nodes``: ``{"alive": n}``.
* ``quit``: shut everything down.
"""

from __future__ import annotations

import json
import logging
import os
import sys

STORE = 200 * 2**20
MARK = "@@ "


def answer(obj: dict) -> None:
    print(MARK + json.dumps(obj), flush=True)


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray._private.state import actors  # the GCS actor table (the state API needs a dashboard)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "object_store_memory": STORE, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=STORE) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
    answer({"address": cluster.address})
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "kill-actor-node":
                hosts = {a["Address"]["NodeID"] for a in actors().values()
                         if a["State"] == "ALIVE" and "MapWorker" in a.get("ActorClassName", "")}
                victim = next((w for w in workers if w.node_id in hosts), None)
                if victim is not None:
                    cluster.remove_node(victim, allow_graceful=False)
                    workers.remove(victim)
                answer({"killed": victim.node_id if victim else None})
            elif command == "nodes":
                answer({"alive": sum(1 for n in ray.nodes() if n["Alive"])})
            elif command == "quit":
                break
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()

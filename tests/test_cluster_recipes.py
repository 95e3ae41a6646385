"""The cluster and docker recipes are checked the way their tools would read them: the autoscaler
config by Ray's own schema, the KubeRay manifests by the fields the CRDs require, the job
config inside the RayJob by transferset's schema and the entrypoint by transferset's CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from core.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def manifests(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc]


def images(node) -> set[str]:
    """Every container image named anywhere in a manifest."""
    if isinstance(node, dict):
        found = {node["image"]} if isinstance(node.get("image"), str) else set()
        return found.union(*(images(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(images(v) for v in node))
    return set()


def test_autoscaler_config_passes_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "autoscaler.yaml").read_text())
    validate_config(prepare_config(raw))  # raises on any schema violation
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert workers and all(0 <= t["min_workers"] <= t["max_workers"] <= raw["max_workers"] for t in workers)
    assert "--gpus all" in raw["docker"]["worker_run_options"]


def check_pod_template(template: dict, where: str, gpu: bool) -> None:
    containers = template["spec"]["containers"]
    assert containers, where
    volumes = {v["name"] for v in template["spec"].get("volumes", [])}
    for container in containers:
        assert container["name"] and container["image"], where
        assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, where
        limits = container["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) == gpu, where


def check_cluster_spec(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams", {}), dict)
    check_pod_template(head["template"], f"{where} head", gpu=False)
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups), "group names must be unique"
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert isinstance(group.get("rayStartParams", {}), dict)
        check_pod_template(group["template"], f"{where} {group['groupName']}", gpu=True)


def test_raycluster_manifest_has_what_kuberay_requires() -> None:
    (cluster,) = manifests("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cluster["metadata"]["name"])
    check_cluster_spec(cluster["spec"], "RayCluster")


def test_rayjob_runs_a_valid_transferset_job() -> None:
    import typer.main

    from pipeline.cli import app

    docs = {doc["kind"]: doc for doc in manifests("rayjob.yaml")}
    job, config_map = docs["RayJob"], docs["ConfigMap"]
    assert job["apiVersion"] == "ray.io/v1"
    check_cluster_spec(job["spec"]["rayClusterSpec"], "RayJob")
    # The entrypoint parses with transferset's own CLI (unknown options would fail here) ...
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["transferset", "generate"]
    command = typer.main.get_command(app).commands["generate"]
    context = command.make_context("generate", argv[2:])
    config_path = Path(context.params["config"])
    # ... and the config it names is the ConfigMap's, mounted where the entrypoint looks.
    mounts = {m["mountPath"]: m["name"] for c in
              job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
              for m in c["volumeMounts"]}
    assert mounts[str(config_path.parent)] == "job"
    cfg = parse_config(yaml.safe_load(config_map["data"][config_path.name]), origin="rayjob ConfigMap")
    assert cfg.teacher_stage.num_gpus >= 1 and cfg.teachers.checkpoints


@pytest.mark.parametrize("name", ["autoscaler.yaml", "raycluster.yaml", "rayjob.yaml"])
def test_every_recipe_runs_the_one_project_image(name: str) -> None:
    found = images(manifests(name))
    assert found == {"ghcr.io/YOUR_ORG/transferset:gpu"}, found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles_copy_real_paths_pin_torch_and_drop_root(dockerfile: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    lines = [line.strip() for line in text.splitlines()]
    for line in lines:
        if line.startswith("COPY") and "--from=" not in line:
            sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"
    assert "constraints.txt" in text  # the same pins as `make test`
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert all(not line.startswith("FROM") or "3.11" in line or "${" in line for line in lines)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)

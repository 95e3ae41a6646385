"""The cluster and docker recipes are checked the way their tools would read them: the autoscaler
config by Ray's own schema, the KubeRay manifests by KubeRay's CRD schemas (cluster/schemas/),
the job config inside the RayJob by transferset's schema and the entrypoint by transferset's CLI,
the images by what Ray's dashboard imports and what KubeRay's probes run."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from core.config import Config, parse_config
from core.store import storage

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]


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
    # KubeRay picks its probes (HTTP from Ray 2.53, else wget) and features by rayVersion: the image's.
    assert spec["rayVersion"] == pinned("ray"), where
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
    # The CRD types submissionMode as a plain string; these are KubeRay's modes that submit the entrypoint.
    assert job["spec"]["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
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


# --- The images: what Ray's dashboard imports, what KubeRay's probes run -------------------------

def run_commands(dockerfile: str, stage: int | None = None) -> list[list[str]]:
    """The shell commands of a Dockerfile's RUN lines (continuations joined, split at ``&&``/``;``),
    each as argv; ``stage`` keeps only that build stage's (-1: the final image)."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / dockerfile).read_text())
    stages: list[list[str]] = [[]]
    for line in (line.strip() for line in text.splitlines()):
        if line.startswith("FROM "):
            stages.append([])
        elif line.startswith("RUN "):
            stages[-1] += re.split(r"&&|;|\|\|", line[4:])
    chosen = stages[1:] if stage is None else [stages[1:][stage]]
    commands = [shlex.split(part) for lines in chosen for part in lines]
    return [argv[1:] if argv[:1] in (["then"], ["do"], ["else"]) else argv for argv in commands if argv]


def pip_requirements(argv: list[str]) -> tuple[list[str], list[Requirement]]:
    """A ``pip install``'s constraint files and the requirements it names (options skipped)."""
    with_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f"}
    constraints, names, args = [], [], iter(argv[2:])
    for arg in args:
        if arg in with_value:
            value = next(args)
            constraints += [value] if arg in ("-c", "--constraint") else []
        elif not arg.startswith("-") and not arg.startswith(".") and "$" not in arg:
            names.append(Requirement(arg))
    return constraints, names


def pinned(name: str) -> str:
    """The version constraints.txt pins ``name`` to (the image and `make test` share the file)."""
    found = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    (spec,) = [str(r.specifier) for r in found if canonicalize_name(r.name) == canonicalize_name(name)]
    assert spec.startswith("=="), f"constraints.txt: {name} {spec} is not an exact pin"
    return spec[2:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_install_rays_dashboard_pinned(dockerfile: str) -> None:
    """ray[data] alone runs a minimal dashboard agent with no HTTP server and no job server: KubeRay's
    probes (agent :52365, dashboard :8265) never pass and `ray job submit` cannot connect."""
    version = pinned("ray")
    rays: list[tuple[list[str], Requirement]] = []
    for argv in run_commands(dockerfile):
        if argv[:2] == ["pip", "install"]:
            constraints, reqs = pip_requirements(argv)
            rays += [(constraints, req) for req in reqs if canonicalize_name(req.name) == "ray"]
    assert rays, f"{dockerfile}: no pip install names ray (the project's ray[data] has no dashboard)"
    for constraints, req in rays:
        assert {"default", "data"} <= req.extras, f"{dockerfile}: {req} lacks the default or data extra"
        # Pinned: by the requirement itself, or by constraints.txt (Dockerfile.cpu's is derived from it).
        assert req.specifier or any(Path(c).name.startswith("constraints") for c in constraints), str(req)
        assert not req.specifier or req.specifier.contains(version), f"{req} disagrees with constraints.txt"


def test_this_environment_has_rays_dashboard_dependencies() -> None:
    """The [dev] extra installs ray[default] with the same pins as the images, so Ray's own check
    (the one `ray start` uses to choose a minimal agent) must pass here too."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    if error is not None and not os.environ.get("CI"):
        pytest.skip(f"this venv predates ray[default] in the [dev] extra ({error}); "
                    "`make test` or `pip install -c constraints.txt -e '.[dev]'` installs it")
    assert error is None, f"Ray's dashboard cannot start here: {error}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_final_image_has_what_kuberays_probes_run(dockerfile: str) -> None:
    """KubeRay's exec probes run `bash -c "wget --tries 1 -T 2 -q -O- http://localhost:52365/
    api/local_raylet_healthz | grep success"` (utils.BaseWgetHealthCommand), in the final image."""
    final = run_commands(dockerfile, stage=-1)
    installs = [argv for argv in final if argv[:2] == ["apt-get", "install"]]
    packages = {arg for argv in installs for arg in argv[2:] if not arg.startswith("-")}
    assert "wget" in packages, f"{dockerfile}: the final image installs no wget ({sorted(packages)})"
    # One layer: the package lists are removed by the same RUN that fetched them.
    lines = [line for line in re.sub(r"\\\n", " ", (ROOT / "docker" / dockerfile).read_text()).splitlines()
             if line.startswith("RUN ") and "apt-get install" in line]
    assert lines and all("apt-get update" in line and "rm -rf /var/lib/apt/lists/*" in line for line in lines)
    # bash and grep come with the Debian base (both Essential packages).
    assert all("bookworm" in line or "${" in line for line in (ROOT / "docker" / dockerfile).read_text().splitlines()
               if line.startswith(("FROM", "ARG PYTHON_IMAGE")))


# --- The KubeRay manifests against KubeRay's CRD schemas -----------------------------------------

def strict(schema: object) -> object:
    """The schema with unknown fields refused, as `kubectl apply` (strict field validation) does:
    a CRD's structural schema only prunes them, and jsonschema would let a misspelt key through."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2 ** 31) <= value < 2 ** 31


def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    """The CRD's v1 openAPIV3Schema (OpenAPI 3.0 is JSON Schema draft 4 plus keywords). jsonschema
    ignores the x-kubernetes-* ones: CEL rules (x-kubernetes-validations) and list-map key
    uniqueness are not checked here; int-or-string fields are spelt out as anyOf, so they are."""
    schema = json.loads((CLUSTER / "schemas" / f"{kind.lower()}.v1.json").read_text())
    return jsonschema.Draft4Validator(strict(schema), format_checker=FORMATS)


def schema_errors(doc: dict) -> list[str]:
    found = crd_validator(doc["kind"]).iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_manifests_pass_kuberays_crd_schemas(name: str) -> None:
    (doc,) = [d for d in manifests(name) if d["apiVersion"] == "ray.io/v1"]
    assert schema_errors(doc) == []


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: s["headGroupSpec"].update(rayStartParam={}), "'rayStartParam' was unexpected"),
    (lambda s: s["workerGroupSpecs"][0].update(replicas="1"), "'1' is not of type 'integer'"),
    (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="4 cores"),
     "does not match"),
    (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "0 is not of type 'string'"),
    (lambda s: s["workerGroupSpecs"][0].update(minReplicas=2 ** 31), "is not a 'int32'"),
])
def test_the_schema_check_catches_what_kubectl_would_refuse(change, expected: str) -> None:
    (cluster,) = manifests("raycluster.yaml")
    broken = copy.deepcopy(cluster)
    change(broken["spec"])
    errors = schema_errors(broken)
    assert any(expected in e for e in errors), errors


# --- Volumes, and where the job's files are ------------------------------------------------------

def pod_templates(spec: dict) -> dict[str, dict]:
    """Every pod template of a RayCluster spec, by group ("head" or the group's name)."""
    return {"head": spec["headGroupSpec"]["template"],
            **{g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}}


def mount_paths(template: dict) -> set[str]:
    """Where a pod's containers see volumes, after checking each mount names a declared volume."""
    declared = {v["name"] for v in template["spec"].get("volumes", [])}
    mounts = [m for c in template["spec"]["containers"] for m in c.get("volumeMounts", [])]
    undeclared = {m["name"] for m in mounts} - declared
    assert not undeclared, f"volumeMounts name undeclared volumes {undeclared}"
    return {m["mountPath"] for m in mounts}


def job_paths(cfg: Config, out: str | None) -> list[str]:
    """What a `generate` job reads or writes on every node: the source, the checkpoints, the sets."""
    paths = [p for p in (cfg.source.path, out, *(cfg.teachers.checkpoints or [])) if p]
    for set_cfg in cfg.sets.values():
        if set_cfg.out == "auto":
            paths.append(cfg.cache_root or "~/.cache/transferset")
        elif set_cfg.out:
            paths.append(set_cfg.out)
    return paths


def unreachable(paths: list[str], mounted: set[str]) -> list[str]:
    """Paths that are neither a URL nor under one of the mounted directories."""
    def under(path: str) -> bool:
        return any(Path(path).is_relative_to(m) for m in mounted)
    return [p for p in paths if storage.is_local(p) and not under(storage.local_path(p).as_posix())]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_every_volume_mount_names_a_declared_volume(name: str) -> None:
    """A mount of an undeclared volume is refused by the API server; /dev/shm is Ray's object store."""
    (doc,) = [d for d in manifests(name) if d["kind"] in ("RayCluster", "RayJob")]
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    for group, template in pod_templates(spec).items():
        assert "/dev/shm" in mount_paths(template), f"{name} {group}: no shared-memory volume"


def test_everything_the_job_reads_is_a_url_or_mounted_in_every_pod() -> None:
    """The driver (head) lists the source; the teacher actors (GPU workers) read its images and the
    checkpoints and commit shards: each path must reach all of them."""
    import typer.main

    from pipeline.cli import app

    docs = {doc["kind"]: doc for doc in manifests("rayjob.yaml")}
    argv = shlex.split(docs["RayJob"]["spec"]["entrypoint"])
    params = typer.main.get_command(app).commands["generate"].make_context("generate", argv[2:]).params
    text = docs["ConfigMap"]["data"][Path(params["config"]).name]
    cfg = parse_config(yaml.safe_load(text), origin="rayjob ConfigMap")
    templates = pod_templates(docs["RayJob"]["spec"]["rayClusterSpec"])
    mounted_everywhere = set.intersection(*(mount_paths(t) for t in templates.values()))
    assert unreachable(job_paths(cfg, params["out"]), mounted_everywhere) == []
    # The check has teeth: a path on the head's disk only (the old /data/cifar10) is refused.
    local = cfg.model_copy(update={"source": cfg.source.model_copy(update={"path": "/data/cifar10"})})
    assert unreachable(job_paths(local, params["out"]), mounted_everywhere) == ["/data/cifar10"]

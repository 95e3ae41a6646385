"""Shared fixtures: one Ray for the whole session (it costs ~6 s to start) and tiny teachers."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Real CIFAR-10 images for integration tests: $CIFAR10_MINI, or the workspace's shared data beside
# the repo. Tests that need it skip where it is absent.
CIFAR10_MINI = next((Path(c) for c in (os.environ.get("CIFAR10_MINI"),
                                       Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini",
                                       "/work/shared/data/cifar10-mini") if c and Path(c).is_dir()),
                    Path("cifar10-mini-is-absent"))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def build_teachers(directory: Path, members: int = 2, steps: int = 30, width: int = 4,
                   task: str = "classify") -> list[Path]:
    """Tiny CNN checkpoints, each trained a few SGD steps on digits (seeded, so reproducible)."""
    import torch

    from core.config import SourceConfig
    from core.models import TinyCNN, input_spec, save_checkpoint
    from core.sources import load_source

    source = load_source(SourceConfig(kind="digits"), "train")
    x = (torch.from_numpy(source.images()).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25
    y = torch.from_numpy(source.labels)
    paths = []
    for member in range(members):
        torch.manual_seed(member)
        model = TinyCNN(1, 10, width=width)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(steps):
            batch = torch.randint(0, len(y), (64,))
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        path = directory / f"{task}-{member}.pt"
        save_checkpoint(path, model.eval(), arch="tiny_cnn", arch_kwargs={"width": width}, num_classes=10,
                        input=input_spec(8, 8, 1, [0.5], [0.25]), task=task,
                        head={"out_dim": 9, "logvar_dim": 1} if task == "regress" else None)
        paths.append(path)
    return paths


def job_config(sets: dict[str, Any], source: Any = None, seed: int = 0, **sections: Any) -> Any:
    """A job config around ``sets`` (name → SetConfig or dict) for the set tests: digits, and the
    test resources (2 CPUs, one 0.5-CPU teacher actor with batch 128). The teacher section is a
    placeholder: the tests give plan_set the checkpoints themselves."""
    from core.config import parse_config

    raw = {"name": "test", "seed": seed, "source": {"kind": "digits"} if source is None else source,
           "teachers": {"model": {"arch": "tiny_cnn"}, "train": {"steps": 1}},
           "teacher_stage": {"batch_size": 128}, "ray": {"num_cpus": 2},
           "sets": dict(sets), **sections}
    return parse_config(raw)


def plan_in(out: Path | str, set_cfg: Any, teachers: list[Path], seed: int = 0, name: str = "s", **job: Any) -> Any:
    """plan_set of one set (``out``: where it goes unless its ``out`` says otherwise)."""
    from pipeline.generate.plan import plan_set

    return plan_set(job_config({name: set_cfg}, seed=seed, **job), name, out, teachers)


def draw_spec(set_cfg: Any, source_cfg: Any = None, seed: int = 0, out_dir: str | Path = "") -> Any:
    """A spec to draw and make shards with, without teachers (no fingerprint, no checkpoints):
    for ``make_shard`` only; ``set_cfg`` must be resolved already."""
    from core.config import GeneratorStageConfig, SourceConfig, TeacherStageConfig
    from core.sets.spec import SetSpec
    from core.sources import load_source
    from stages.samplers import set_size

    source_cfg = source_cfg or SourceConfig(kind="digits")
    source = load_source(source_cfg, "train")
    return SetSpec(name="draw", out_dir=str(out_dir), set_cfg=set_cfg, source_cfg=source_cfg, seed=seed,
                   task_name=source.task.name, classes=tuple(source.classes), outputs=source.task.outputs(source),
                   image_shape=source.shape, total=set_size(set_cfg, source), fingerprint="", teachers=(),
                   teacher_stage=TeacherStageConfig(), generator_stage=GeneratorStageConfig())


def generate_set_in(out: Path, set_cfg: Any, teachers: list[Path], seed: int = 0,
                    progress: Callable[[str], None] | None = None, name: str | None = None,
                    **job: Any) -> dict[str, Any]:
    """generate_set on digits with the test resources (2 CPUs, one 0.5-CPU teacher actor), into
    ``out``; the set is named after its sampler unless ``name`` is given."""
    from pipeline.generate.driver import generate_set

    name = name or set_cfg.sampler.kind
    return generate_set(job_config({name: set_cfg}, seed=seed, **job), name, out, teachers,
                        progress or (lambda _: None))


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path: equal snapshots = byte-identical trees."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="session")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build_teachers(tmp_path_factory.mktemp("teachers"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Any:
    """A tiny job finished by the installed ``transferset run`` (tests/bad_input.py): what the
    bad-input corpus and the boundary tests break copies of, and must leave unchanged. Made once
    per test run: under ``pytest -n`` the workers share it (the parent of their temp roots)."""
    from bad_input import shared_corpus

    base = tmp_path_factory.getbasetemp()
    return shared_corpus((base if worker_id == "master" else base.parent) / "corpus")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """An embedded 2-CPU Ray shared by every Ray test (generate_set reuses an initialised Ray)."""
    from core.config import RayConfig
    from pipeline.generate.driver import ensure_ray, shutdown_ray

    ensure_ray(RayConfig(address=None, num_cpus=2))
    yield
    shutdown_ray()


@pytest.fixture(scope="session", autouse=True)
def attached_runs(request: pytest.FixtureRequest) -> Iterator[None]:
    """The installed command, run by a test as a process, connects to this process's session Ray
    (``RAY_ADDRESS``), as a user's job connects to a running cluster, instead of starting a Ray
    of its own: ~5 CPU-seconds saved a run, on a suite that keeps both cores busy
    (docs/TESTING.md). Tests marked ``own_ray`` — those that kill a run with its Ray, run two
    jobs at once, or check what the embedded Ray prints — get an empty ``RAY_ADDRESS``: an
    embedded Ray each, as ``make run`` starts one."""
    if not any(item.get_closest_marker("e2e") for item in request.session.items):
        yield
        return
    request.getfixturevalue("ray_session")
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield
    os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(autouse=True)
def own_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of an ``own_ray`` test start an embedded Ray each (see :func:`attached_runs`)."""
    if request.node.get_closest_marker("own_ray"):
        monkeypatch.setenv("RAY_ADDRESS", "")


# ---------------------------------------------------------------- two workers (`make test`: pytest -n 2)

TIER_RANK = {"concurrency": 0, "cluster": 0, "e2e": 1}  # files holding these tests go first (docs/TESTING.md)
OTHER_RANK = 2  # files of the fast tier only


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the suite file by file, the files of the slowest tiers first, each file's tests in
    their own order. Under ``pytest -n 2 --dist loadfile --no-loadscope-reorder`` a file is one
    unit of work (its module fixtures are built once) and the workers take the files in this
    order, so the long ones start first instead of keeping one worker busy at the end."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def rank(tests: list[pytest.Item]) -> int:
        return min((TIER_RANK[m.name] for item in tests for m in item.iter_markers() if m.name in TIER_RANK),
                   default=OTHER_RANK)

    items[:] = [item for tests in sorted(files.values(), key=rank) for item in tests]


# ---------------------------------------------------------------- killing whole process sessions


def session_members(sid: int) -> list[int]:
    """Processes in session ``sid`` (the killed run and every Ray process it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group, then anything else left in the session it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the run had already ended; its session may still hold processes
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while (left := session_members(proc.pid)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not session_members(proc.pid), "processes of the killed run survived"


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """An S3-compatible server on 127.0.0.1 (moto's, in a thread of this process) with a bucket;
    yields the environment that points boto/s3fs at it (this process's too, while the module runs)."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_KEYS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # fsspec keeps one S3FileSystem per set of arguments, bound to the endpoint of its creation
    # (another module's server, stopped since): drop them so this server is the one used.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        boto3.client("s3").create_bucket(Bucket="cache")
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()

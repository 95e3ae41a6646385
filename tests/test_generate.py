"""generate_set end to end on Ray: reproducible bytes, replayable samples, secure-mode
readable shards, no-op reruns, and refusals that leave existing outputs untouched."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import build_teachers, generate_set_in, snapshot

from core.config import SetConfig, SourceConfig, sampler_config
from core.errors import UserError
from core.records import format as fmt
from core.samplers import apply_params
from core.sets import index as sx
from core.sets.fingerprint import set_fingerprint
from core.sources import load_source
from core.tasks import decode_fields
from pipeline.generate.plan import MARKER_NAME
from pipeline.inspect.verify import verify_set
from stages.teachers import Ensemble

DIGITS = SourceConfig(kind="digits")
SETS = {
    "mix": SetConfig(sampler=sampler_config(kind="mix"), samples=300, samples_per_shard=64),
    "views": SetConfig(sampler=sampler_config(kind="views", views=2), samples=200, samples_per_shard=64),
}


def generate(name: str, out: Path, teachers: list[Path], seed: int = 0, **kw: Any) -> dict[str, Any]:
    return generate_set_in(out, SETS[name], teachers, seed=seed, **kw)


def records(set_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    index = sx.read_index(set_dir)
    return [(key, decode_fields(fields)) for url in sx.shard_urls(set_dir, index)
            for key, fields in fmt.iter_tar(url)]


@pytest.fixture(scope="module")
def made(ray_session, teachers, tmp_path_factory) -> dict[str, Any]:
    """Each set generated twice into fresh directories, then once more over a finished one."""
    root = tmp_path_factory.mktemp("sets")
    results = {f"{name}-{copy}": generate(name, root / f"{name}-{copy}", teachers)
               for name in SETS for copy in ("a", "b")}
    before = snapshot(root / "mix-a")
    messages: list[str] = []
    results["again"] = generate("mix", root / "mix-a", teachers, progress=messages.append)
    results["again_unchanged"] = snapshot(root / "mix-a") == before
    return {"root": root, "results": results, "messages": messages}


@pytest.mark.parametrize("name", list(SETS))
def test_same_config_gives_identical_bytes(made, name) -> None:
    a, b = made["root"] / f"{name}-a", made["root"] / f"{name}-b"
    assert made["results"][f"{name}-a"]["shards_made"] == (4 if name == "views" else 5)
    assert snapshot(a) == snapshot(b)  # shards, manifest and index.json byte for byte
    index = sx.read_index(a)
    assert [s.sha256 for s in index.shards] == [s.sha256 for s in sx.read_index(b).shards]
    assert [fmt.sha256_file(p) for p in sorted((a / sx.SHARDS_DIR).iterdir())] == \
        [s.sha256 for s in index.shards]


def test_rerun_on_complete_set_makes_nothing(made) -> None:
    again = made["results"]["again"]
    assert again["shards_made"] == 0 and again["shards_total"] == 5 and again["samples"] == 300
    assert made["results"]["again_unchanged"]
    assert any("nothing to do" in m for m in made["messages"])
    assert again["teacher_forward_samples"] == 0


def test_more_samples_only_add_shards(made, teachers, tmp_path) -> None:
    """Same fingerprint, more samples: every shard is kept, the short last one completed under
    its full name (the short one stays, unlisted, until gc)."""
    grown = tmp_path / "grown"
    shutil.copytree(made["root"] / "mix-a", grown)
    bigger = SETS["mix"].model_copy(update={"samples": 400})
    assert generate_set_in(grown, bigger, teachers)["shards_made"] == 3  # shard 4 (was 44 samples), 5, 6
    original = snapshot(made["root"] / "mix-a")
    after = snapshot(grown)
    kept = [f"shards/{sx.shard_name(i)}" for i in range(4)]
    assert [after[name] for name in kept] == [original[name] for name in kept]
    assert sx.read_index(grown).fingerprint == sx.read_index(made["root"] / "mix-a").fingerprint
    assert sx.read_manifest(grown).num_rows == 400 and verify_set(grown) == []


@pytest.mark.parametrize("name", list(SETS))
def test_verify_finds_no_problems(made, name) -> None:
    assert verify_set(made["root"] / f"{name}-a") == []


@pytest.mark.parametrize("name", list(SETS))
def test_samples_replay_and_index_describes_them(made, teachers, name) -> None:
    set_dir = made["root"] / f"{name}-a"
    source = load_source(DIGITS, "train")
    index = sx.read_index(set_dir)
    stored = records(set_dir)
    for key, record in stored:
        meta = record["meta"]
        assert meta["key"] == key and meta["sampler"] == name
        np.testing.assert_array_equal(apply_params(meta["sampler"], meta["params"], source), record["image"])
        assert record["logp"].dtype == np.float16 and record["logp"].shape == (10,)
        assert abs(float(np.exp(record["logp"].astype(np.float64)).sum()) - 1.0) < 1e-2
        assert 0.0 <= meta["entropy"] <= 1.0 and 0.0 <= meta["disagreement"] <= 1.0
        expected_label = int(source.labels[meta["params"]["image"]]) if name == "views" else -1
        assert record["label"] == meta["label"] == expected_label
    keys = [key for key, _ in stored]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == index.totals.samples
    assert sx.read_manifest(set_dir).column("key").to_pylist() == keys
    assert index.task == "classify" and index.num_classes == 10 and index.fingerprint
    assert index.target.to_dict() == {"kind": "logp", "dtype": "float16", "temperature_free": True,
                                      "payload_bytes": 20}
    assert index.image == sx.ImageSpec(height=8, width=8, channels=1, encoding="png")
    assert [t.sha256 for t in index.teachers] == [fmt.sha256_file(p) for p in teachers]
    assert index.statistics["per_sampler"] == {name: len(keys)}
    # What is stored is what was labelled: the teachers on the decoded images give the stored targets.
    first = [r for k, r in stored if k.startswith("000000-")]
    ensemble = Ensemble(teachers, 10, device="cpu", batch_size=128)
    again = ensemble.predict(np.stack([r["image"] for r in first]))
    np.testing.assert_allclose(fmt.quantize_logp(again.logp).astype(np.float32),
                               np.stack([r["logp"] for r in first]).astype(np.float32), rtol=2e-3, atol=2e-3)


READER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import webdataset as wds
    out = []
    for sample in wds.WebDataset(sys.argv[1:], shardshuffle=False).decode():
        logp = sample["logp.npy"]
        assert isinstance(logp, np.ndarray) and logp.dtype == np.float16, (type(logp), logp.dtype)
        assert isinstance(sample["json"], dict) and sample["json"]["key"] == sample["__key__"]
        label = sample["cls"] if "cls" in sample else None
        out.append([sample["__key__"], label, type(sample["png"]).__name__])
    print(json.dumps({"samples": out, "project": any(m in sys.modules for m in ("core", "pipeline", "stages"))}))
""")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_plain_webdataset_reads_shards_in_secure_mode(made, tmp_path) -> None:
    """No project code, no pickle: a consumer with WDS_SECURE=1 reads the shards over http."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(made["root"])))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = [f"{base}/{name}-a/shards/{entry.name}" for name in SETS
                for entry in sx.read_index(made["root"] / f"{name}-a").shards]
        (tmp_path / "reader.py").write_text(READER)
        result = subprocess.run([sys.executable, "reader.py", *urls], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120, env={**os.environ, "WDS_SECURE": "1"})
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["project"]
    expected = [key for name in SETS for key, _ in records(made["root"] / f"{name}-a")]
    assert [s[0] for s in report["samples"]] == expected
    assert all(s[2] == "bytes" for s in report["samples"])
    labels = [s[1] for s in report["samples"]]
    assert all(isinstance(v, int) for v in labels[300:]) and all(v is None for v in labels[:300])


def test_fingerprint_covers_everything_but_the_sample_count() -> None:
    source, mix = load_source(DIGITS, "train"), SETS["mix"]
    base = set_fingerprint(mix, source, ["a", "b"], 0)
    assert set_fingerprint(mix.model_copy(update={"samples": 10}), source, ["a", "b"], 0) == base
    others = [
        set_fingerprint(mix, source, ["b", "a"], 0), set_fingerprint(mix, source, ["a", "b"], 1),
        set_fingerprint(mix.model_copy(update={"samples_per_shard": 32}), source, ["a", "b"], 0),
        set_fingerprint(SETS["views"], source, ["a", "b"], 0),
        set_fingerprint(mix, load_source(SourceConfig(kind="digits", split_seed=1), "train"), ["a", "b"], 0),
    ]
    assert base not in others and len(set(others)) == len(others)


# ---------------------------------------------------------------- refusals (nothing is written)


def test_wrong_task_checkpoint_is_refused_before_writing(teachers, tmp_path) -> None:
    regress = build_teachers(tmp_path, members=1, steps=1, task="regress")[0]
    out = tmp_path / "out"
    with pytest.raises(UserError, match="regress") as err:
        generate("mix", out, [teachers[0], regress])
    assert str(regress) in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_other_fingerprint_is_refused_and_files_untouched(made, teachers) -> None:
    set_dir = made["root"] / "mix-a"
    before = snapshot(set_dir)
    index = sx.read_index(set_dir)
    with pytest.raises(UserError, match="fingerprint") as err:
        generate("mix", set_dir, teachers, seed=1)
    assert index.fingerprint in str(err.value) and "choose another --out" in str(err.value)
    with pytest.raises(UserError, match="fingerprint"):
        generate("mix", set_dir, teachers[:1])  # other teachers
    assert snapshot(set_dir) == before


def test_foreign_or_unfinished_directories_are_refused(teachers, tmp_path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate("mix", foreign, teachers)
    unfinished = tmp_path / "unfinished"
    (unfinished / sx.SHARDS_DIR).mkdir(parents=True)
    (unfinished / MARKER_NAME).write_text("0" * 64 + "\n")
    (unfinished / sx.SHARDS_DIR / sx.shard_name(0)).write_bytes(b"x")
    before = snapshot(unfinished)
    with pytest.raises(UserError, match="unfinished set with fingerprint 0000"):
        generate("mix", unfinished, teachers)
    assert snapshot(foreign) == {"notes.txt": b"mine"} and snapshot(unfinished) == before

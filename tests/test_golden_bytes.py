"""Golden bytes: the sha256 of every file of two small classification sets and two small
regression sets (shards, manifest, fingerprint marker and ``index.json``), recorded from main at
775edc7 before the code moved into floors. The same configs must give the same bytes after any
refactor; a change here is a format change (bump ``FORMAT_VERSION`` and say so in FORMAT.md).

``index.json`` names the teachers' and the gaze cache's paths, so they are hashed with the
directory the sets were made in written as ``<root>``; everything else is hashed as it is. The
teachers are trained with one torch thread: CPU float sums depend on how the work is split, and
other tests leave the process at another thread count."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import build_teachers, generate_set_in
from regression_fixtures import build_regression_teachers, gaze_config

from core.config import SamplerConfig, SetConfig
from core.format import FORMAT_VERSION

CLASSIFICATION = {
    "mix": SetConfig(sampler=SamplerConfig(kind="mix"), samples=300, samples_per_shard=64),
    "views": SetConfig(sampler=SamplerConfig(kind="views", views=2), samples=200, samples_per_shard=64),
}
REGRESSION = {
    "mix": SetConfig(sampler=SamplerConfig(kind="mix"), samples=120, samples_per_shard=50),
    "real": SetConfig(sampler=SamplerConfig(kind="views", views=2), samples_per_shard=80,
                      targets={"dtype": "float16"}),
}

GOLDEN = {
    "cls/mix/_fingerprint": "055f30812fb6144dea600c4c1d3bdba8ca59bd344c426b1dcc834aa836c28806",
    "cls/mix/index.json": "beb6dd8d64716c040e5b5d4798442281bb9e638a0bc0baf01725551156412036",
    "cls/mix/manifest.parquet": "15fc69d67a50f9c96e4909a8c9c957650f5be7229d79218a49ec319c59b876be",
    "cls/mix/shards/shard-000000.tar": "512720c4f867e14ce2f66b209ef9ccf34bac067be6bba8d419f557ce61d9f222",
    "cls/mix/shards/shard-000001.tar": "8cf1e86bf71830515475a818306ab5a192280749f0896e7339e79533b240da31",
    "cls/mix/shards/shard-000002.tar": "daaac176e0b69141915059ed9e622f6684fcdbeb2cc65e44bcf22ab20fd048ae",
    "cls/mix/shards/shard-000003.tar": "54d0999c65b8ba05de21f82f7e11761183fe9f0766209ebe9f870b2b3791c779",
    "cls/mix/shards/shard-000004.tar": "188ab9b1a0e41a37b9bc70a8c1e00d0feb99520fb1e1c4094c145ee28189429d",
    "cls/views/_fingerprint": "f1c67e9a7499b4c5fa5a9ad527c8b00d02be3dcd95e4b862572c449803da4cda",
    "cls/views/index.json": "1aa9e57179edbd5b854ad0b5e872e8d67779785755ad5e3c083e278053719e1e",
    "cls/views/manifest.parquet": "e434bed1a2066956beb15651fb56cb122e978cdd909085c46da2dbec4a5e73a8",
    "cls/views/shards/shard-000000.tar": "0ee276b335063261219bfbade8d45754f36606b6231aa7ace7c279de28b39587",
    "cls/views/shards/shard-000001.tar": "24008223230ebb778da4fa644d9736d8422c62b4431571460e35860f26c43d61",
    "cls/views/shards/shard-000002.tar": "6898f5122e9605e2b786cb042b04c1f66ce626b14da41b35ec5d68398eaa0952",
    "cls/views/shards/shard-000003.tar": "8b7b3360cbd5e21200452d300e39c975af8f6d3a05d70881db6343344fa573f3",
    "reg/gaze-0.pt": "f34334d7d97f15aef89eaff4f2d440b1329008055d9d3a58a3f421f1a18299b9",
    "reg/gaze-1.pt": "d2c5cf37188638dfb55f503bd014235e36c5b1040b54e2c4001eca2322030c4d",
    "reg/mix/_fingerprint": "117fb77be91c7c26ae52ef1a20931ccd0eabd0eb1821787d3e29d7244463be2a",
    "reg/mix/index.json": "1fe9ae2d48fb40fba0ff065672974a824af63f9333df584cfe9bd9b8004e5568",
    "reg/mix/manifest.parquet": "c8225d6b698d2aebd0756f302d7fc8b7d126e1cb89cd6cf26f49c3b174298cd6",
    "reg/mix/shards/shard-000000.tar": "c74ae34df760661c23e5270ed10a1e72d9bf720357619f09b6629431e1a19529",
    "reg/mix/shards/shard-000001.tar": "e30511dba650be0c302d24d123305caa2bf6740ce275bc93b11f186ed9f6ec34",
    "reg/mix/shards/shard-000002.tar": "79b066f04080c539d02ca38aae7f34f199ced9384186fa9e57747c8cde231eba",
    "reg/real/_fingerprint": "1a3fb2a9f3c4894993fbdd5ae2b939942eba40a2b23b141e8a0747f1f8011fe4",
    "reg/real/index.json": "c1efd5d4cd01111900314fa2af944d97c06acacee0014db9d653b05ddb500813",
    "reg/real/manifest.parquet": "810d96dae0f2ba62d7439c971765ff1ce97b80984432ae17fc27ec7b2027e830",
    "reg/real/shards/shard-000000.tar": "1c1f9061aa6f33196d12e790826f2e48b16bb728e3c2438c200804297ba43ba5",
    "reg/real/shards/shard-000001.tar": "67a96b865f4172112fea3ad77a949119efc4ca8ed5d2517b96fd4ccf044913fc",
    "reg/real/shards/shard-000002.tar": "6b6a47afc84baf196ac24ce59ba127dffa30a09691b8d0666c3efb9a1059170b",
    "teachers/classify-0.pt": "4bdc755640f56650f3803049e71b6245eb2d261ce819ef9be2440137ef700d8d",
    "teachers/classify-1.pt": "0b8296273b7baa3d4b8430f7e69b1a5f78bc7c4391afdc13cb012f3e34d89546",
}


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` but the gaze cache (index.json with ``root`` as ``<root>``)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if name.startswith("gaze/"):
            continue
        data = path.read_bytes()
        if path.name == "index.json":
            data = data.replace(str(root).encode(), b"<root>")
        out[name] = hashlib.sha256(data).hexdigest()
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def made(ray_session, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    (root / "teachers").mkdir()
    (root / "reg").mkdir()
    source_cfg = gaze_config(root / "gaze")
    with one_thread():
        teachers = build_teachers(root / "teachers")
        regression_teachers = build_regression_teachers(root / "reg", source_cfg)
    for name, set_cfg in CLASSIFICATION.items():
        generate_set_in(root / "cls" / name, set_cfg, teachers, seed=0)
    for name, set_cfg in REGRESSION.items():
        generate_set_in(root / "reg" / name, set_cfg, regression_teachers, seed=3, name=name, source=source_cfg,
                        teacher_stage={"batch_size": 64})
    return root


def test_format_version_is_unchanged() -> None:
    assert FORMAT_VERSION == 1


@pytest.mark.parametrize("part", ["teachers", "cls/mix", "cls/views", "reg/gaze-", "reg/mix", "reg/real"])
def test_the_same_configs_give_the_recorded_bytes(made, part) -> None:
    got = {name: digest for name, digest in hashes(made).items() if name.startswith(part)}
    want = {name: digest for name, digest in GOLDEN.items() if name.startswith(part)}
    assert want and got == want

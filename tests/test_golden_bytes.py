"""Golden bytes: the sha256 of every file of two small classification sets and two small
regression sets (shards, manifest, fingerprint marker and ``index.json``), first recorded from main
at 775edc7 before the code moved into floors. The same configs must give the same bytes after any
refactor; a change here is a format change (bump ``FORMAT_VERSION`` and say so in FORMAT.md).

Format 2 changed the order of views-only sets (view-major, docs/FORMAT.md "Versions"), so the
views sets' entries (``cls/views``, ``reg/real``) changed and nothing else did; what format 1
wrote for them stays in ``FORMAT1_VIEWS``, which ``tests/format1.py`` must still write (so the
format-1 sets other tests make are the real old ones). ``cls/views`` caps 1 437 images × 2 views at
200 samples, which format 2 fills with 200 unaugmented views (images before second views);
``reg/real`` holds every view, so the augmented views stay pinned.

Since issue 24 a short last shard is named by its count (``shard-N-C.tar``, docs/FORMAT.md "Shard
names"): its bytes are unchanged, and so is everything else but the index.json that lists it,
which differs in that name only (``BEFORE_COUNTED_NAMES`` checks exactly that).

``index.json`` names the teachers' and the gaze cache's paths, so they are hashed with the
directory the sets were made in written as ``<root>``; everything else is hashed as it is. The
teachers are trained with one torch thread: CPU float sums depend on how the work is split, and
other tests leave the process at another thread count."""
from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import build_teachers, generate_set_in
from format1 import write_format1_set
from regression_fixtures import build_regression_teachers, gaze_config

from core.config import SetConfig, sampler_config
from core.records.format import FORMAT_VERSION, READABLE_FORMATS

CLASSIFICATION = {
    "mix": SetConfig(sampler=sampler_config(kind="mix"), samples=300, samples_per_shard=64),
    "views": SetConfig(sampler=sampler_config(kind="views", views=2), samples=200, samples_per_shard=64),
}
REGRESSION = {
    "mix": SetConfig(sampler=sampler_config(kind="mix"), samples=120, samples_per_shard=50),
    "real": SetConfig(sampler=sampler_config(kind="views", views=2), samples_per_shard=80,
                      targets={"dtype": "float16"}),
}

# Per platform, named by the sha256 of its first teacher: the tiny teachers train to other floats
# on another CPU (an AVX2 AMD EPYC gives other checkpoints than the machine of the first table), and
# every byte made from them follows. On a platform without a table every part fails: record one.
REFERENCE = "4bdc755640f56650f3803049e71b6245eb2d261ce819ef9be2440137ef700d8d"
EPYC_AVX2 = "451717d2e076043cc15de868315b0a2d6bb8b5ead68e0522db2dcf345388a21f"
GOLDEN = {
    # Recorded at 775edc7. Its views sets (cls/views, reg/real) were format 1's there (their bytes
    # are in FORMAT1_VIEWS); format 2's were recorded on 2026-12-08 (817213c), on a machine of this
    # platform again. Its other index.json entries predate counted shard names: see BEFORE_COUNTED_NAMES.
    REFERENCE: {
        "cls/mix/_fingerprint": "055f30812fb6144dea600c4c1d3bdba8ca59bd344c426b1dcc834aa836c28806",
        "cls/mix/index.json": "beb6dd8d64716c040e5b5d4798442281bb9e638a0bc0baf01725551156412036",
        "cls/mix/manifest.parquet": "15fc69d67a50f9c96e4909a8c9c957650f5be7229d79218a49ec319c59b876be",
        "cls/mix/shards/shard-000000.tar": "512720c4f867e14ce2f66b209ef9ccf34bac067be6bba8d419f557ce61d9f222",
        "cls/mix/shards/shard-000001.tar": "8cf1e86bf71830515475a818306ab5a192280749f0896e7339e79533b240da31",
        "cls/mix/shards/shard-000002.tar": "daaac176e0b69141915059ed9e622f6684fcdbeb2cc65e44bcf22ab20fd048ae",
        "cls/mix/shards/shard-000003.tar": "54d0999c65b8ba05de21f82f7e11761183fe9f0766209ebe9f870b2b3791c779",
        "cls/mix/shards/shard-000004-000044.tar": "188ab9b1a0e41a37b9bc70a8c1e00d0feb99520fb1e1c4094c145ee28189429d",
        "cls/views/_fingerprint": "efee4b86bd8ce2e09779434b6a2adca0c12d5d617190796e8407597b3da89ee3",
        "cls/views/index.json": "8164a7a4ddc4a3e4ad5fc8ba49e0aefb12e461b7db61a8e1b88af5cfe34dd61e",
        "cls/views/manifest.parquet": "89b01ac5f74e40acbebb02b2edfddc3c6998ba7578577ff80ea7de117bc4da91",
        "cls/views/shards/shard-000000.tar": "4c9716092cd1fe1d81ba052c6aa6462f0e6798b7ac8de0c7ccd2ad9895548367",
        "cls/views/shards/shard-000001.tar": "76048ae07fa0836ad545733555452f6bce5d24a253617f0e9d81f78e51c20e63",
        "cls/views/shards/shard-000002.tar": "33f3a904327aae41eaca17d8ba3210c378461d814fbc5690ba0520efb4ea38c4",
        "cls/views/shards/shard-000003-000008.tar": "7940b8c19ff8c30640987cc97013ba60a858222683c45e88ca42ea48002cb819",
        "reg/gaze-0.pt": "f34334d7d97f15aef89eaff4f2d440b1329008055d9d3a58a3f421f1a18299b9",
        "reg/gaze-1.pt": "d2c5cf37188638dfb55f503bd014235e36c5b1040b54e2c4001eca2322030c4d",
        "reg/mix/_fingerprint": "117fb77be91c7c26ae52ef1a20931ccd0eabd0eb1821787d3e29d7244463be2a",
        "reg/mix/index.json": "1fe9ae2d48fb40fba0ff065672974a824af63f9333df584cfe9bd9b8004e5568",
        "reg/mix/manifest.parquet": "c8225d6b698d2aebd0756f302d7fc8b7d126e1cb89cd6cf26f49c3b174298cd6",
        "reg/mix/shards/shard-000000.tar": "c74ae34df760661c23e5270ed10a1e72d9bf720357619f09b6629431e1a19529",
        "reg/mix/shards/shard-000001.tar": "e30511dba650be0c302d24d123305caa2bf6740ce275bc93b11f186ed9f6ec34",
        "reg/mix/shards/shard-000002-000020.tar": "79b066f04080c539d02ca38aae7f34f199ced9384186fa9e57747c8cde231eba",
        "reg/real/_fingerprint": "18d28bbe4eaa708112ce75fcc08f6b2b32fb8c5da5939a06b5483a3e5840c0d9",
        "reg/real/index.json": "46e575597bf395b48eee4b9d207696e699ab93e101c43c24ddcf02b726e9cc80",
        "reg/real/manifest.parquet": "7768d5e25bade45fa45776d4ddc2a8c51f3c29f236f6bee69b4e4ca3991c9846",
        "reg/real/shards/shard-000000.tar": "4d9b5a6ffac208db3701ca723ad61e3ec3ad6f75b348f5a9bc3eb84b9d2a9fef",
        "reg/real/shards/shard-000001.tar": "d75ab80fddcf7497c7b4b970ea76bae417002afcde5399cd0f52d9fa1d89e3cb",
        "reg/real/shards/shard-000002-000032.tar": "236ee9e603fe9338c1a361691f86be2a6fd60e3d1eacda9ee9b43ba7c143cd63",
        "teachers/classify-0.pt": "4bdc755640f56650f3803049e71b6245eb2d261ce819ef9be2440137ef700d8d",
        "teachers/classify-1.pt": "0b8296273b7baa3d4b8430f7e69b1a5f78bc7c4391afdc13cb012f3e34d89546",
    },
    # Recorded with format 2 (the views sets view-major); every other entry is what format 1 gave,
    # but the short last shards' names and so the index.json entries (issue 24: counted names).
    EPYC_AVX2: {
        "cls/mix/_fingerprint": "4391b2d71144e9aa407f19263f71f5dadb406aebe330288a7930d4660e1e00e6",
        "cls/mix/index.json": "61a39cbf25741a41b52538a157db94a13dc35f7fdacb185d35586e98bff10389",
        "cls/mix/manifest.parquet": "f977494d32a6a436a5b75bdae5f69814f30d928d1656e33b5fcba4a74a4ea0d8",
        "cls/mix/shards/shard-000000.tar": "2797367d89e92e25d4703d2a83a0fd9c02226a5d9a1a313b1389b341e8bbf232",
        "cls/mix/shards/shard-000001.tar": "9536eb95c313fc95c0295aee2fdf1c5ac3ccc63536794863fb2b069d1d2d9294",
        "cls/mix/shards/shard-000002.tar": "b75406825852221043fb90b76dd96f3ff80493b9dbd443922a2f7200cde9e44c",
        "cls/mix/shards/shard-000003.tar": "90f9178411f71543d293c28e68e2c0c8eda14599842d0adc8d6e97fdcec86f24",
        "cls/mix/shards/shard-000004-000044.tar": "9faebd347b5887c5e9219ae9caeb39a3aeede73f671d0d57aff92bcd459be3b0",
        "cls/views/_fingerprint": "767d24d21ae9c6b82981a238555c17b77808379d04e62b12662254ade41ab6ea",
        "cls/views/index.json": "c9e23fc90ebf169565ad8583845c6e0f09879a2834e9fa38d8b98bba57481788",
        "cls/views/manifest.parquet": "4c2feb890f3c2505e284687d37625ec0db41246949d6d35f42e6838f420ccfe8",
        "cls/views/shards/shard-000000.tar": "1f9825b02d4da357576d1dc3398756bff3ddbf4e9dd5fe53c54bf94e1bcc297a",
        "cls/views/shards/shard-000001.tar": "ac4d188d105867b3f1e46f628650d9738ec7c4cc4133888ec164ac2adc4172f5",
        "cls/views/shards/shard-000002.tar": "b1623cd89f6f0939a602cc3b779b49fcd58797f2dc835fbd26d0fd952c0388a0",
        "cls/views/shards/shard-000003-000008.tar": "3feed139dfdc23e2260aa2fb34e9d7721a3bf58fe57ab36ec17916a0a5cbebd5",
        "reg/gaze-0.pt": "f1999226f952979df1a727c54ba9b90309127d437f65700ddaa475e5d94d325d",
        "reg/gaze-1.pt": "fb13d902fbf970b5afb8e45f91b24a00ca6112f4185072a9530c922d1097df64",
        "reg/mix/_fingerprint": "57e4af636d7673b87fcb3be0625d8fffe19de69a2e9eb91a0a40eb26e717334e",
        "reg/mix/index.json": "a01c9912a2dcf6bc175a1152256165a96cb5ab7cd2f56a4bb13fabfc787f8f93",
        "reg/mix/manifest.parquet": "9a8a57b0aad5537adb670361a3d7d1eca641a8c5813e45a761f3458c35077bf2",
        "reg/mix/shards/shard-000000.tar": "71c601a17db3d6634202eeb756626f95831d44fec8d4385f45e0b46e8c679b8c",
        "reg/mix/shards/shard-000001.tar": "1d17e2d8be51cca2cb3e0fcc3f2a2dd08f526f8fc3eebaac5397a92e3fcc55e5",
        "reg/mix/shards/shard-000002-000020.tar": "76127f24fbb6e09f646bd4840924945768d782722560572b90ca3ad9cd3775a1",
        "reg/real/_fingerprint": "708d0ffe8f01b1b0ced58f3fdb4d7ba0cb6f2dc63c92da128031b6caf1cf0bbd",
        "reg/real/index.json": "5e88a0c54ca8f9c4da16362cc27856a0e69860f93da398876ebdf1fcaf0a089b",
        "reg/real/manifest.parquet": "1d2a5bdeb7c3061204d55b6c4eb8f08fc799d7d1ff8e70005fc084cdcb72a805",
        "reg/real/shards/shard-000000.tar": "11a87e28df43fae005751c471691c9aeae4879057478d513ae2f497b1a6e7273",
        "reg/real/shards/shard-000001.tar": "f96788fbc124c99bb280e704fa2e79e527f6bde1dab5f35a4f1539ad7e66c9b2",
        "reg/real/shards/shard-000002-000032.tar": "3b62e31dc54a691e228a477de7de36a6d9879a74f17b3d49ea3a22670d300db9",
        "teachers/classify-0.pt": "451717d2e076043cc15de868315b0a2d6bb8b5ead68e0522db2dcf345388a21f",
        "teachers/classify-1.pt": "6475e657ed11b946f29f3c66ee54a8d9630c666eec0d700f05e63e594d7e4485",
    },
}
# index.json as written before short last shards were named by their count (issue 24: shard bytes
# unchanged, ``shard-N.tar`` → ``shard-N-C.tar``): checked with the counted names written back as
# the plain ones (``plain_names``). On EPYC_AVX2 both digests are checked, which shows the name is
# all that changed; on REFERENCE, where the new index could not be recorded, only this one.
BEFORE_COUNTED_NAMES = {
    REFERENCE: {"cls/mix/index.json": "beb6dd8d64716c040e5b5d4798442281bb9e638a0bc0baf01725551156412036",
                "reg/mix/index.json": "1fe9ae2d48fb40fba0ff065672974a824af63f9333df584cfe9bd9b8004e5568"},
    EPYC_AVX2: {name: old for name, (old, _) in {
        "cls/mix/index.json": ("63d81ae0d0c1452358c1e87d91576c487b5ff33f620fa45d51a0fb69e00dedb4", ""),
        "cls/views/index.json": ("5608fb2f3af28cf4fd3085c8482932dd151b2b3d5c14b8a91a109706c78e5da7", ""),
        "reg/mix/index.json": ("b2b1a1ae2168b2dfd974c829e4c0f252c2167c6f31672325b8a1918d3b03ac8f", ""),
        "reg/real/index.json": ("da0ec20c915f1aecd4539f1ebc6e50226e588ff7f75c9bc32fc89bfe74fd123e", ""),
    }.items()},
}


def plain_names(data: bytes) -> bytes:
    """An index.json with counted short-shard names as they were before (``shard-N-C.tar`` → ``shard-N.tar``)."""
    return re.sub(rb"(shard-\d{6})-\d{6}(\.tar|\.npy)", rb"\1\2", data)


# What format 1 wrote for the views sets (image by image): tests/format1.py must still write it.
FORMAT1_VIEWS = {
    REFERENCE: {
        "cls/views/_fingerprint": "f1c67e9a7499b4c5fa5a9ad527c8b00d02be3dcd95e4b862572c449803da4cda",
        "cls/views/index.json": "1aa9e57179edbd5b854ad0b5e872e8d67779785755ad5e3c083e278053719e1e",
        "cls/views/manifest.parquet": "e434bed1a2066956beb15651fb56cb122e978cdd909085c46da2dbec4a5e73a8",
        "cls/views/shards/shard-000000.tar": "0ee276b335063261219bfbade8d45754f36606b6231aa7ace7c279de28b39587",
        "cls/views/shards/shard-000001.tar": "24008223230ebb778da4fa644d9736d8422c62b4431571460e35860f26c43d61",
        "cls/views/shards/shard-000002.tar": "6898f5122e9605e2b786cb042b04c1f66ce626b14da41b35ec5d68398eaa0952",
        "cls/views/shards/shard-000003.tar": "8b7b3360cbd5e21200452d300e39c975af8f6d3a05d70881db6343344fa573f3",
        "reg/real/_fingerprint": "1a3fb2a9f3c4894993fbdd5ae2b939942eba40a2b23b141e8a0747f1f8011fe4",
        "reg/real/index.json": "c1efd5d4cd01111900314fa2af944d97c06acacee0014db9d653b05ddb500813",
        "reg/real/manifest.parquet": "810d96dae0f2ba62d7439c971765ff1ce97b80984432ae17fc27ec7b2027e830",
        "reg/real/shards/shard-000000.tar": "1c1f9061aa6f33196d12e790826f2e48b16bb728e3c2438c200804297ba43ba5",
        "reg/real/shards/shard-000001.tar": "67a96b865f4172112fea3ad77a949119efc4ca8ed5d2517b96fd4ccf044913fc",
        "reg/real/shards/shard-000002.tar": "6b6a47afc84baf196ac24ce59ba127dffa30a09691b8d0666c3efb9a1059170b",
    },
    EPYC_AVX2: {
        "cls/views/_fingerprint": "86aa2c1ef7a5b1e5bda3f5202837f8562f08d7f878ea194bcabd78daa4542489",
        "cls/views/index.json": "c77b4bb6d0ff0370b9d2e81c01681a210a1ffd45e939f180319f8083520c79d9",
        "cls/views/manifest.parquet": "f28ec08f6b3ee163192895d5fe12889754885237bd381734bc584349a107f478",
        "cls/views/shards/shard-000000.tar": "758bc46c698104553906d6fea51377d15a84796cdf5e4c4e71e705e7e05cbe14",
        "cls/views/shards/shard-000001.tar": "36fe96cbecaf1514406ffad9d22f308024dba1c18244f235014a8a3a7892fe17",
        "cls/views/shards/shard-000002.tar": "4850bdedc280b0c76231a712d965ac778787eafad8d953bef14d161e4fa133a5",
        "cls/views/shards/shard-000003.tar": "4c0ed37948bb212c12f9e82a99685921b4320c5e563e5d91175dff946d4b360e",
        "reg/real/_fingerprint": "82f18fbc49a1eca5700f68a5f74879e5afc9bd0fb64e4d2911ee7e19c3dd6113",
        "reg/real/index.json": "b25e3c8bc6eac7821d9372246c6279b01144c5a7ba196ce6562d80fc7a965840",
        "reg/real/manifest.parquet": "1e5dda97a4b96f151a4f920d1ad4f1b29bc3f481eec0a2610fb5d686ddaf464f",
        "reg/real/shards/shard-000000.tar": "11ece9ff7a7a9a72fd4787937f91005ba363fb05770d5eb1ed0a4a6390d1ba34",
        "reg/real/shards/shard-000001.tar": "979b9af5ab0931a49919f35aae30bcee898a136dfe38addce134ffba2d002aad",
        "reg/real/shards/shard-000002.tar": "7f408f8cd0063ad38fafac73b49f228b46f5a72c47f0655f17920f5c4bb0a791",
    },
}


def hashes(root: Path, names: Any = lambda data: data) -> dict[str, str]:
    """sha256 of every file under ``root`` but the gaze cache (index.json with ``root`` as ``<root>``,
    and through ``names``)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if name.startswith("gaze/"):
            continue
        data = path.read_bytes()
        if path.name == "index.json":
            data = names(data.replace(str(root).encode(), b"<root>"))
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


def recorded(made: Path, tables: dict[str, dict[str, str]], part: str) -> dict[str, str]:
    """This platform's recorded entries of ``part`` (the platform is its first teacher's sha256)."""
    platform = hashes(made / "teachers")["classify-0.pt"]
    if platform not in tables:
        pytest.fail(f"no golden bytes recorded for this platform (teachers/classify-0.pt {platform})")
    want = {name: digest for name, digest in tables[platform].items() if name.startswith(part)}
    if not want:
        pytest.skip(f"{part}: format 2's bytes are not recorded on this platform yet")
    return want


def test_format_version_is_3_and_1_and_2_are_still_read() -> None:
    assert FORMAT_VERSION == 3 and READABLE_FORMATS == (1, 2, 3)


@pytest.mark.parametrize("part", ["teachers", "cls/mix", "cls/views", "reg/gaze-", "reg/mix", "reg/real"])
def test_the_same_configs_give_the_recorded_bytes(made, part) -> None:
    platform = hashes(made / "teachers")["classify-0.pt"]
    before = {k: v for k, v in BEFORE_COUNTED_NAMES.get(platform, {}).items() if k.startswith(part)}
    if before:
        plain = {name: digest for name, digest in hashes(made, plain_names).items() if name in before}
        assert plain == before, "index.json differs from the recorded one in more than the short shard's name"
    want = recorded(made, GOLDEN, part)
    got = {name: digest for name, digest in hashes(made).items() if name.startswith(part)}
    if platform == REFERENCE:  # its index.json entries are the ones before counted names, checked above
        got = {name: want.get(name, digest) if name in before else digest for name, digest in got.items()}
    assert got == want


@pytest.mark.parametrize("part", ["cls/views", "reg/real"])
def test_the_format1_writer_gives_the_bytes_format_1_recorded(made, part) -> None:
    want = recorded(made, FORMAT1_VIEWS, part)
    out = made / "format1"
    if part == "cls/views":
        write_format1_set(out / part, CLASSIFICATION["views"], sorted((made / "teachers").glob("*.pt")), seed=0,
                          name="views")
    else:
        write_format1_set(out / part, REGRESSION["real"], sorted((made / "reg").glob("gaze-*.pt")), seed=3,
                          name="real", source=gaze_config(made / "gaze"), teacher_stage={"batch_size": 64})
    got = {name.removeprefix("format1/"): digest for name, digest in hashes(made).items()
           if name.startswith(f"format1/{part}")}
    assert got == want

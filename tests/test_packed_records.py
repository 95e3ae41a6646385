"""Packed replay records, value by value: bit fields round-trip, and quantised top-k targets keep
every stored log-probability within half a grid step of the truth (issue 26)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import FormatError
from core.records.bitpack import BitField, BitLayout, bits_for
from core.records.packed_target import PackedTopk
from core.records.target_codec import compress_topk, kl_divergence, reconstruct_logp


def test_bits_for_is_the_smallest_width_that_holds_every_value() -> None:
    assert [bits_for(n) for n in (1, 2, 3, 4, 5, 256, 257, 1000, 1024, 1025)] == [1, 1, 2, 2, 3, 8, 9, 10, 10, 11]


def test_fields_round_trip_and_rows_are_as_wide_as_their_bits() -> None:
    rng = np.random.default_rng(0)
    layout = BitLayout((BitField("class", 10, 10), BitField("flip", 1), BitField("lam", 8), BitField("image", 17)))
    assert layout.row_bits == 100 + 1 + 8 + 17 and layout.row_bytes == 16
    columns = {"class": rng.integers(0, 1000, (500, 10)), "flip": rng.integers(0, 2, 500),
               "lam": rng.integers(0, 256, 500), "image": rng.integers(0, 1 << 17, 500)}
    packed = layout.pack(columns)
    assert packed.shape == (500, 16) and packed.dtype == np.uint8
    back = layout.unpack(packed)
    for name, values in columns.items():
        np.testing.assert_array_equal(back[name], values)
    # the first field's lowest bit is the first row byte's lowest bit
    one = layout.pack({"class": np.array([[1] + [0] * 9]), "flip": [0], "lam": [0], "image": [0]})
    assert one[0, 0] == 1 and not one[0, 1:].any()
    assert BitLayout.described(layout.describe()) == layout


def test_a_value_outside_its_bits_is_refused() -> None:
    layout = BitLayout((BitField("flip", 1),))
    with pytest.raises(FormatError, match="outside its 1 bits"):
        layout.pack({"flip": np.array([0, 2])})
    with pytest.raises(FormatError, match="expected"):
        layout.unpack(np.zeros((3, 2), dtype=np.uint8))


def peaked(rng: np.random.Generator, rows: int, classes: int, sharpness: float) -> np.ndarray:
    logits = rng.normal(size=(rows, classes)) * sharpness
    return logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(
        1, keepdims=True)


@pytest.mark.parametrize("sharpness", [0.5, 3.0, 8.0])
def test_each_stored_value_lies_within_half_a_step_of_the_truth(sharpness: float) -> None:
    rng = np.random.default_rng(1)
    logp = peaked(rng, 300, 1000, sharpness)
    codec = PackedTopk(classes=1000, k=10, bits=8)
    fields = codec.encode(logp)
    back = codec.decode(fields)
    top = np.argsort(-logp, axis=1, kind="stable")[:, :10]
    # the top 10, the most probable first, the rest in the canonical order a reader finds them in:
    # by grid value, ties (equal steps below the first) by class
    np.testing.assert_array_equal(fields["class"][:, 0], top[:, 0])
    np.testing.assert_array_equal(np.sort(fields["class"], axis=1), np.sort(top, axis=1))
    rel, rest = fields["rel"].astype(np.int64), fields["class"][:, 1:].astype(np.int64)
    assert np.all((np.diff(rel, axis=1) > 0) | ((np.diff(rel, axis=1) == 0) & (np.diff(rest, axis=1) > 0)))
    assert np.any(np.diff(rel, axis=1) == 0)  # ties occur, so the order is the codec's, not argsort's
    top = fields["class"].astype(np.int64)
    truth = np.take_along_axis(logp, top, 1)
    got = np.take_along_axis(back.astype(np.float64), top, 1)
    rel_truth, rel_got = truth[:, 1:] - truth[:, :1], got[:, 1:] - got[:, :1]
    inside = rel_truth > -codec.span
    float16 = np.abs(rel_truth) * 2.0 ** -11  # a stored value is the grid's, as float16 holds it
    assert np.all((np.abs(rel_got - rel_truth) - float16)[inside] <= codec.step / 2 + 1e-4)
    # the tail: the mass outside the top 10, relative to the first, within half its grid step
    rest = np.log(np.clip(1 - np.exp(truth).sum(1), 1e-300, None))
    low, high = codec.tail_range
    tail_step = (high - low) / 255
    got_rest = np.log(np.clip(1 - np.exp(got).sum(1), 1e-300, None))
    ok = (rest - truth[:, 0] > low) & (rest > -30)
    tail_f16 = (np.abs(rest - truth[:, 0]) + codec.span) * 2.0 ** -11
    assert np.all((np.abs((got_rest - got[:, 0]) - (rest - truth[:, 0])) - tail_f16)[ok] <= tail_step / 2 + 1e-3)


def test_packed_top10_costs_little_kl_beyond_the_float16_top10() -> None:
    rng = np.random.default_rng(2)
    logp = peaked(rng, 400, 1000, 3.0)
    half = np.stack([reconstruct_logp(compress_topk(row, 10)) for row in logp])
    packed = PackedTopk(classes=1000, k=10, bits=8).decode(PackedTopk(classes=1000, k=10, bits=8).encode(logp))
    kl_half, kl_packed = kl_divergence(logp, half).mean(), kl_divergence(logp, packed).mean()
    assert kl_half > 0.05  # the truncation dominates both
    assert kl_packed <= 1.02 * kl_half


def test_every_class_kept_needs_no_tail_and_rows_sum_to_one() -> None:
    rng = np.random.default_rng(3)
    logp = peaked(rng, 50, 10, 2.0)
    codec = PackedTopk(classes=10, k=10, bits=8)
    # all 10 of 10: the class set is one (1 bit), the first's position 4 bits, against 40 bits of indices
    assert [(f.name, f.bits, f.count) for f in codec.fields()] == [("classes", 1, 1), ("first", 4, 1), ("values", 8, 9)]
    back = codec.decode(codec.encode(logp)).astype(np.float64)
    np.testing.assert_allclose(np.exp(back).sum(1), 1.0, atol=1e-5)
    assert np.abs(back - logp).max() <= codec.step  # half a step each side of the renormalisation
    assert math.isclose(codec.step, 16 / 255)


# ---------------------------------------------------------------- parameter columns

def structured(layout, rows: list[dict]) -> np.ndarray:
    from core.records.replay_params import dtype_of

    out = np.zeros(len(rows), dtype=dtype_of(layout.fields()))
    for r, row in enumerate(rows):
        for name, value in row.items():
            out[r][name] = value
    return out


def test_mix_parameters_pack_into_their_ranges_and_come_back_exactly() -> None:
    from core.records.packed_params import LAM_STEPS, PackedParams
    from core.records.replay_params import ParamLayout

    layout = ParamLayout(kinds=("mix",), images=1437, box_views=False, pad=2, shape=(8, 8))
    rng = np.random.default_rng(4)
    rows = [layout.encode("mix", {"i": int(rng.integers(1437)), "j": int(rng.integers(1437)),
                                  "lam": int(rng.integers(LAM_STEPS + 1)) / LAM_STEPS,
                                  "aug_i": {"dx": int(rng.integers(5)), "dy": int(rng.integers(5)), "flip": 1},
                                  "aug_j": {"dx": 0, "dy": 4, "flip": 0}}) for _ in range(200)]
    records = structured(layout, rows)
    packer = PackedParams(layout, side=8)
    widths = {f.name: f.bits for f in packer.fields()}
    assert widths == {"i": 11, "j": 11, "lam": 8, "aug_i_dx": 3, "aug_i_dy": 3, "aug_i_flip": 1,
                      "aug_j_dx": 3, "aug_j_dy": 3, "aug_j_flip": 1}
    bits = BitLayout(tuple(packer.fields()))
    assert bits.row_bytes == 6  # 44 bits, against 29 bytes of unpacked columns
    back = packer.unpack(bits.unpack(bits.pack(packer.pack(records))), records.dtype)
    assert back.tobytes() == records.tobytes()
    assert [layout.decode(row) for row in back] == [layout.decode(row) for row in records]


def test_a_lam_off_the_grid_or_an_unranged_column_is_refused() -> None:
    from core.records.packed_params import PackedParams
    from core.records.replay_params import ParamLayout

    layout = ParamLayout(kinds=("mix",), images=10, box_views=False, pad=0, shape=(8, 8))
    still = {"dx": 0, "dy": 0, "flip": 0}
    records = structured(layout, [layout.encode("mix", {"i": 1, "j": 2, "lam": 0.3, "aug_i": still, "aug_j": still})])
    with pytest.raises(FormatError, match="not on the 1/255 grid"):
        PackedParams(layout, side=8).pack(records)
    with pytest.raises(FormatError, match=r"\['sigma', 'seed'\].*cannot be packed"):
        PackedParams(ParamLayout(kinds=("noise",), images=10, box_views=False, pad=0, shape=(8, 8)), side=8)


def test_random_resized_crop_boxes_pack_in_the_raw_images_grid() -> None:
    from core.records.packed_params import PackedParams
    from core.records.replay_params import ParamLayout

    layout = ParamLayout(kinds=("views",), images=50_000, box_views=True, pad=0, shape=(24, 24))
    packer = PackedParams(layout, side=500)
    widths = {f.name: (f.bits, f.count) for f in packer.fields()}
    assert widths == {"image": (16, 1), "aug_box": (9, 4), "aug_flip": (1, 1)}
    rows = [layout.encode("views", {"image": 49_999, "aug": {"box": [0, 17, 500, 483], "flip": 1}}),
            layout.encode("views", {"image": 3, "aug": {"eval": 1, "flip": 0}})]
    records = structured(layout, rows)
    bits = BitLayout(tuple(packer.fields()))
    assert bits.row_bytes == 7  # 53 bits
    back = packer.unpack(bits.unpack(bits.pack(packer.pack(records))), records.dtype)
    assert back.tobytes() == records.tobytes()


# ---------------------------------------------------------------- whole records

def test_a_shards_records_pack_to_their_bits_and_unpack_to_the_same_bytes() -> None:
    from core.records.packed import PackedRecords
    from core.records.packed_params import LAM_STEPS
    from core.records.replay import RecordLayout
    from core.records.replay_params import ParamLayout

    params = ParamLayout(kinds=("mix",), images=20_000, box_views=False, pad=2, shape=(8, 24))
    layout = RecordLayout(params=params, num_classes=1000, target="topk", k=10, index="u2")
    rng = np.random.default_rng(5)
    rows = 300
    logp = peaked(rng, rows, 1000, 3.0)
    codec = PackedTopk(classes=1000, k=10, bits=8)
    quantised = codec.quantised(logp)
    records = np.zeros(rows, dtype=layout.dtype)
    records["index"] = np.arange(rows)
    records["i"], records["j"] = rng.integers(0, 20_000, rows), rng.integers(0, 20_000, rows)
    records["lam"] = rng.integers(0, LAM_STEPS + 1, rows) / LAM_STEPS
    for name in ("aug_i_dx", "aug_i_dy", "aug_j_dx", "aug_j_dy"):
        records[name] = rng.integers(0, 5, rows)
    records["aug_i_flip"], records["aug_j_flip"] = rng.integers(0, 2, rows), rng.integers(0, 2, rows)
    for name, values in quantised.items():
        records["topk"][name] = values
    # p̄'s float64 argmax: the first stored class but for float32 ties (made here more often than real)
    records["teacher_argmax"] = np.where(rng.random(rows) < 0.9, quantised["index"][:, 0], rng.integers(0, 1000, rows))
    records["entropy"], records["disagreement"] = rng.integers(0, 256, rows), rng.integers(0, 256, rows)
    kl = rng.uniform(0, 2, rows)
    kl[:5] = [0.0, 1e-7, 3e-5, 0.25, 500.0]  # zero, below and above the grid's range
    records["target_kl"] = kl.astype(np.float16)

    packer = PackedRecords(layout, candidates=1024, side=8)
    with pytest.raises(FormatError, match="first top-k class"):
        packer.pack(records)
    records = packer.snapped(records)
    np.testing.assert_array_equal(records["teacher_argmax"], quantised["index"][:, 0])
    stored_kl = records["target_kl"].astype(np.float64)
    assert stored_kl[0] == 0 and stored_kl[1] == pytest.approx(1e-6, rel=0.02) and stored_kl[4] == pytest.approx(100)
    inside = (kl >= 1e-5) & (kl <= 100)  # (float16 holds smaller ones with less than 4 % precision)
    assert np.all(np.abs(stored_kl[inside] / kl[inside] - 1) <= 0.04)  # half a step of 10^(8/254) and float16
    packed = packer.pack(records)
    # index 10, i/j 15+15, λ 8, offsets 4×3, flips 2, the class set 78 (log2 C(1000, 10) = 77.4) and
    # the first's position 4, values 72, tail 8, Ĥ/disagreement/KL 24
    assert packer.bits().row_bits == 10 + 30 + 8 + 12 + 2 + 78 + 4 + 72 + 8 + 24 == 248
    assert packed.shape == (rows, 31) and layout.dtype.itemsize == 68  # 31 bytes against 68
    back = packer.unpack(packed)
    assert back.tobytes() == records.tobytes()
    # the targets a trainer learns from are the quantiser's, read the way a float16 top-k set is read
    from core.records.replay import decode_columns
    np.testing.assert_array_equal(decode_columns(layout, back).target, codec.decode(codec.encode(logp)))


@pytest.mark.parametrize(("classes", "k"), [(1000, 10), (100, 10), (10, 10), (1000, 1), (10, 3)])
def test_the_class_set_and_first_position_give_back_every_row_exactly(classes: int, k: int) -> None:
    """The combination code (rank of the sorted classes, the first's position, values in class
    order) reads back the rows encode wrote, flat rows with every value tied included."""
    rng = np.random.default_rng(7)
    logp = peaked(rng, 400, classes, 3.0)
    logp[:20] = -math.log(classes)  # flat: every value on one grid step, the order all ties
    codec = PackedTopk(classes=classes, k=k, bits=8)
    fields = codec.encode(logp)
    back = codec.from_bits(codec.to_bits(fields))
    assert set(back) == set(fields)
    for name, values in fields.items():
        np.testing.assert_array_equal(np.asarray(back[name], dtype=np.int64), np.asarray(values, dtype=np.int64))
    rank_bits = sum(f.width for f in codec.fields() if f.name == "classes")
    assert rank_bits == max(math.comb(classes, min(k, classes)) - 1, 1).bit_length()


def test_a_damaged_class_set_or_order_is_refused() -> None:
    codec = PackedTopk(classes=1000, k=10, bits=8)
    fields = codec.encode(peaked(np.random.default_rng(8), 5, 1000, 3.0))
    columns = codec.to_bits(fields)
    columns["classes"] = np.full_like(columns["classes"], (1 << 26) - 1)  # a rank past C(1000, 10)
    with pytest.raises(FormatError, match=r"not one of the C\(1000, 10\) sets"):
        codec.from_bits(columns)
    assert np.all(fields["rel"][:, 0] < fields["rel"][:, -1])
    swapped = {**fields, "class": fields["class"][:, [0, 9, 2, 3, 4, 5, 6, 7, 8, 1]],
               "rel": fields["rel"][:, [8, 1, 2, 3, 4, 5, 6, 7, 0]]}  # the same values, listed out of order
    with pytest.raises(FormatError, match="canonical order"):
        codec.to_bits(swapped)


def test_a_record_off_the_grid_is_refused_not_rounded() -> None:
    from core.records.packed import PackedRecords
    from core.records.replay import RecordLayout
    from core.records.replay_params import ParamLayout

    params = ParamLayout(kinds=("views",), images=100, box_views=False, pad=0, shape=(8, 8))
    layout = RecordLayout(params=params, num_classes=100, target="topk", k=5, index="u2")
    records = np.zeros(1, dtype=layout.dtype)
    records["topk"]["index"] = [[3, 1, 2, 0, 4]]
    records["teacher_argmax"] = 3
    records["target_kl"] = 0.5  # not on the KL grid either: the first problem found is the values'
    records["topk"]["logp"] = [[0.0, -0.01, -1, -2, -3]]  # -0.01 lies between two steps of 16/255
    with pytest.raises(FormatError, match="not on the packed grid"):
        PackedRecords(layout, candidates=64, side=8).pack(records)
    with pytest.raises(FormatError, match="top-k targets"):
        PackedRecords(RecordLayout(params=params, num_classes=100, target="logp"), candidates=64, side=8)


def test_a_topk_set_with_bits_stores_the_grids_record_and_a_reader_gets_the_quantisers_targets() -> None:
    from core.config import TargetConfig
    from core.records.targets import stored_target

    rng = np.random.default_rng(6)
    logp = peaked(rng, 20, 1000, 3.0)
    plain, gridded = TargetConfig(kind="topk", k=10), TargetConfig(kind="topk", k=10, bits=8)
    kind = stored_target(gridded)
    assert kind.identity(plain) == {"kind": "topk", "k": 10}  # today's sets keep their fingerprints
    assert kind.identity(gridded) == {"kind": "topk", "k": 10, "bits": 8}
    codec = PackedTopk(classes=1000, k=10, bits=8)
    expected = codec.decode(codec.encode(logp))
    for row, want in zip(logp, expected, strict=True):
        record = kind.encode(row, gridded, (0, 0, 0))
        assert record.dtype == kind.record_dtype(10, 1000) and float(record["logp"][0]) == 0.0
        np.testing.assert_array_equal(kind.estimate(record), want)
    with pytest.raises(ValueError, match="only for kind 'topk'"):
        TargetConfig(kind="dense", bits=8)


def test_lambda_moved_to_the_grid_packs_and_rebuilds_the_same_blend() -> None:
    from core.config import SourceConfig
    from core.records.packed_params import LAM_STEPS, PackedParams
    from core.records.replay_params import ParamLayout
    from core.samplers import SAMPLERS
    from core.sources import load_source

    source = load_source(SourceConfig(kind="digits"), "train")
    drawn = {"i": 3, "j": 7, "lam": 0.123456789, "aug_i": {"dx": 1, "dy": 2, "flip": 0},
             "aug_j": {"dx": 0, "dy": 0, "flip": 1}}
    snapped = PackedParams.on_grid(drawn)
    assert snapped["lam"] == 31 / LAM_STEPS and drawn["lam"] == 0.123456789  # the nearest step; a copy
    layout = ParamLayout(kinds=("mix",), images=len(source), box_views=False, pad=int(source.pad),
                         shape=(int(source.shape[0]), int(source.shape[1])))
    records = structured(layout, [layout.encode("mix", snapped)])
    packer = PackedParams(layout, side=max(source.shape[:2]))
    bits = BitLayout(tuple(packer.fields()))
    back = packer.unpack(bits.unpack(bits.pack(packer.pack(records))), records.dtype)
    kind, params = layout.decode(back[0])
    mix = SAMPLERS["mix"]
    np.testing.assert_array_equal(mix.apply(params, source), mix.apply(snapped, source))
    assert not np.array_equal(mix.apply(drawn, source), mix.apply(snapped, source))  # the grid moves the blend

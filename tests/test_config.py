"""Config loading: overrides, strictness and one-line errors that name the field."""

from pathlib import Path

import pytest

from core.config import apply_override, load_config
from core.errors import UserError

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


def test_quickstart_loads_with_expected_shape():
    cfg = load_config(QUICKSTART)
    assert cfg.name == "quickstart"
    assert cfg.teachers.members >= 4 and cfg.teachers.train.cutmix > 0
    assert set(cfg.students) == {"erm", "kd", "xcl_mix", "xcl_gen"}
    assert cfg.students["xcl_mix"].sets == {"real": 0.5, "mix": 0.5}
    assert cfg.students["xcl_gen"].sets == {"real": 0.5, "gen": 0.5}
    assert cfg.sets["gen"].sampler.kind == "gan" and cfg.sets["gen"].sampler.mix_classes
    steps = {s.train.steps for s in cfg.students.values()}
    assert len(steps) == 1, "students must train for equal steps"


def test_override_touches_only_the_named_student_despite_yaml_anchors():
    cfg = load_config(QUICKSTART, ["students.kd.train.steps=7", "teachers.members=2"])
    assert cfg.students["kd"].train.steps == 7
    assert cfg.students["erm"].train.steps != 7
    assert cfg.teachers.members == 2


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("teachers.membrs=3", "teachers.membrs"),
        ("teachers.train.steps=abc", "teachers.train.steps"),
        ("students.kd.kd.temperature=0", "students.kd.kd.temperature"),
        ("students.kd.sets.nope=1", "nope"),
        ("sets.mix.sampler.kind=stylegan", "sets.mix.sampler.kind"),
        ("students.kd.sets.real=0", "sum to more than 0"),
    ],
)
def test_bad_values_name_the_field_on_one_line(override, field):
    with pytest.raises(UserError) as info:
        load_config(QUICKSTART, [override])
    message = str(info.value)
    assert field in message and "\n" not in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_override_syntax_errors():
    with pytest.raises(UserError, match="key=value"):
        apply_override({}, "no-equals-sign")
    with pytest.raises(UserError, match="not a section"):
        apply_override({"name": "x"}, "name.sub=1")


def test_teachers_parallel_off_reads_as_written_in_yaml():
    """YAML 1.1 turns a bare `off` into false; the config takes it as the `off` it was."""
    cfg = load_config(QUICKSTART, ["teachers.parallel=off"])
    assert cfg.teachers.parallel == "off"
    with pytest.raises(UserError, match="teachers.parallel"):
        load_config(QUICKSTART, ["teachers.parallel=true"])

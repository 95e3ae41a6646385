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


PRUNING = QUICKSTART.with_name("pruning.yaml")


@pytest.mark.parametrize(("config", "overrides", "needles"), [
    (QUICKSTART, ["students.kd.train.label_smoothing=0.1"],
     ("students.kd", "train.label_smoothing shapes ERM's real-label loss", "objective 'kd'", "use objective 'erm'")),
    (QUICKSTART, ["students.xcl_mix.train.mixup=0.3", "students.xcl_mix.train.mix_alpha=0.4"],
     ("students.xcl_mix", "train.mixup, train.mix_alpha shape", "remove them")),
    (QUICKSTART, ["students.kd.objective=kd_online", "students.kd.sets={}", "students.kd.train.regression_loss=mse"],
     ("students.kd", "train.regression_loss", "objective 'kd_online'")),
    (QUICKSTART, ["students.kd.train.randaugment={}"], ("students.kd", "train.randaugment", "sets.source")),
    (QUICKSTART, ["students.erm.kd.temperature=2"], ("students.erm", "kd: an 'erm' student", "remove it")),
    (QUICKSTART, ["students.erm.sets={mix: 1}"], ("students.erm", "sets: an 'erm' student", "objective 'kd'")),
    (PRUNING, ["students.slim_distilled.prune.then.objective=[kd]",
                "students.slim_distilled.prune.then.train.cutmix=0.5"],
     ("prune", "then.train.cutmix", "phase kd does not have", "add the phase erm")),
])
def test_an_erm_loss_option_on_a_run_without_that_loss_is_refused(config, overrides, needles):
    """cutmix, mixup, mix_alpha, label_smoothing and regression_loss shape ERM's loss only: given to
    a distilling student (or to pruning phases without erm) they used to do nothing, silently; so
    did a kd section or sets on an ERM student whose pruning recipes (if any) do not distil."""
    with pytest.raises(UserError) as info:
        load_config(config, overrides)
    message = str(info.value)
    assert all(needle in message for needle in needles), message
    assert "\n" not in message


def test_erm_loss_options_stay_allowed_where_they_act():
    cfg = load_config(QUICKSTART, ["students.erm.train.label_smoothing=0.1", "students.erm.train.cutmix=0.5",
                                   "students.kd.sets.source=0.2", "students.kd.kd.alpha=0.9",
                                   "students.kd.train.randaugment={}", "students.kd.train.cutmix=0.0"])
    assert cfg.students["erm"].train.label_smoothing == 0.1 and cfg.students["kd"].train.randaugment is not None

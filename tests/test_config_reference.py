"""docs/CONFIG.md's key reference is generated from the config models (pipeline/config_reference.py)
and must equal them: a field added, renamed or redescribed without `make docs` fails here."""

from __future__ import annotations

from pathlib import Path

from core.config import Config
from pipeline.config_reference import MARKER, render, undescribed, updated

CONFIG_MD = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"


def test_the_committed_reference_is_the_generated_one() -> None:
    text = CONFIG_MD.read_text(encoding="utf-8")
    assert text.count(MARKER) == 1
    assert text == updated(text), "docs/CONFIG.md is stale: run `make docs`"


def test_every_key_has_a_description_and_a_row() -> None:
    assert undescribed() == []
    reference = render()
    for name, field in Config.model_fields.items():
        assert f"| `{name}` |" in reference and field.description in reference
    for key in ("| `samples_per_shard` | int | `1024` |", "| `views` | int | `8` |",  # a set; the views sampler
                "| `kind` | `dense` \\| `topk` \\| `sampled` | `\"dense\"` |", "## GanOptions (kind: gan)"):
        assert key in reference, key


def test_regenerating_keeps_the_prose_above_the_marker(tmp_path) -> None:
    text = "# Configuration\n\nHand-written prose.\n\n" + MARKER + "\n\nstale table\n"
    again = updated(text)
    assert again.startswith("# Configuration\n\nHand-written prose.\n\n" + MARKER + "\n\n# Every key")
    assert "stale table" not in again and updated(again) == again

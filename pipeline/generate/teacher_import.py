"""Teachers made elsewhere, imported into the project's self-describing checkpoint.

An entry of ``teachers.models`` (or ``transferset import-teacher``) names an architecture and
its weights; the import builds the model, loads the weights safely, checks they fit (keys,
shapes, the head's classes against the data's, one forward at the contract's size) and writes
the checkpoint with the input contract resolved (the library's published one, overridden by
``input``). Downstream, an imported member is any other checkpoint: sets, ``kd_online``,
reports and fingerprints (by checkpoint sha256) do not know where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.errors import UserError
from core.models import build_model, probe_forward, save_checkpoint
from core.models.contracts import resolve_contract
from core.models.weights import fit_state_dict, read_state_dict
from core.models.zoo import pretrained_model, published_contract
from core.options.teacher import TeacherModelConfig
from core.records.format import sha256_file
from core.store import storage


@dataclass
class ImportedTeacher:
    """A member built and checked, ready to be written (nothing is written before every member is)."""

    model: nn.Module
    entry: TeacherModelConfig
    classes: int
    contract: dict[str, Any]
    origin: dict[str, str]  # the weights' sha256, or the pretrained tag

    def save(self, path: str | Path) -> str:
        """Write the checkpoint atomically; returns its sha256."""
        return save_checkpoint(path, self.model, arch=self.entry.arch, arch_kwargs=self.entry.arch_kwargs,
                               num_classes=self.classes, input=self.contract, train={"imported": self.origin})


def weights_origin(entry: TeacherModelConfig) -> dict[str, str]:
    """What the weights are, independent of where they lie: their sha256, or the pretrained tag."""
    if entry.pretrained_tag is not None:
        return {"pretrained": entry.pretrained_tag}
    if not storage.is_file(entry.weights):
        raise UserError(f"weights {entry.weights}: file not found")
    return {"weights_sha256": sha256_file(entry.weights)}


def import_spec(entry: TeacherModelConfig) -> dict[str, Any]:
    """The reuse spec of an imported member: arch, weights (by content) and the input override."""
    return {"arch": entry.arch, "arch_kwargs": entry.arch_kwargs, "weights": weights_origin(entry),
            "input": entry.input.given() if entry.input is not None else {}}


def prepare_teacher(entry: TeacherModelConfig, classes: int, *, default_channels: int, where: str,
                    allowed_factories: tuple[str, ...] = ()) -> ImportedTeacher:
    """Build ``entry``'s model with its weights and contract, every check done; writes nothing.
    ``default_channels``: the input channels of an arch without a published contract."""
    given = entry.input.given() if entry.input is not None else {}
    origin = weights_origin(entry)
    tag = entry.pretrained_tag
    published = published_contract(entry.arch, tag=tag)
    channels = int(given.get("channels") or (published or {}).get("channels") or default_channels)
    if tag is not None:
        model, native = pretrained_model(entry.arch, tag, channels, entry.arch_kwargs)
        if native != classes:
            raise UserError(f"{where}: the pretrained head of {entry.arch} has {native} classes, the data has "
                            f"{classes}; import weights trained on these classes (or fine-tune it first)")
    else:
        state = read_state_dict(entry.weights)
        model = build_model(entry.arch, channels, classes, entry.arch_kwargs, allowed_factories)
        fit_state_dict(model, state, f"{where}: weights {entry.weights}", entry.arch, entry.arch_kwargs, classes)
    contract = resolve_contract(published, {**given, "channels": channels}, where)
    probe_forward(model, contract["channels"], contract["size"], classes, where)
    return ImportedTeacher(model.eval(), entry, classes, contract, origin)

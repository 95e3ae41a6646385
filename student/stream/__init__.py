"""The student's stream (see :mod:`student.stream.loader`): epochs without replacement per set
(:mod:`~student.stream.order`), fixed per-batch mixing quotas (:mod:`~student.stream.mixing`),
set members read in shuffled windows (:mod:`~student.stream.sets`), the real split decoded per
sample (:mod:`~student.stream.real`), and what a run read (:mod:`~student.stream.coverage`)."""

from student.stream.loader import (
    ERROR_KEY,
    FIELDS,
    WEIGHTS,
    StreamPlan,
    TransferLoader,
    TransferStream,
    transfer_loader,
)
from student.stream.real import RealPart

__all__ = ["ERROR_KEY", "FIELDS", "WEIGHTS", "RealPart", "StreamPlan", "TransferLoader", "TransferStream",
           "transfer_loader"]

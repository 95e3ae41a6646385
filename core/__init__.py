"""The contract floor: what the set generator (``stages``, ``pipeline``) and the student trainer
(``student``) share — config schema, errors, storage, the set format (records, target codec,
typed index), the tasks, model registry and checkpoints, nets, real-data sources. Imports no
other floor of the project."""

"""Training strategies as nodes run them: one package per mode (its server, workers,
checkpoints and its ``TrainingStrategy``, which adds ``run`` to the mode's rules in
``protocol.strategies``), registered once in ``registry``."""

"""Training strategies: one package per mode (its settings, server, workers, checkpoints and
its ``TrainingStrategy`` object), registered once in ``registry``."""

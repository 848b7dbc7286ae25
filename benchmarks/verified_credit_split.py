"""The cost of trust for split training: the trainer makes a sample of each loader node's
batches again (``strategies/split/verification.py: LoaderChecker``). Here one loader node's
batches of the digits MLP job (augmented, batch 32) are made, then passed through the real
checker as the trainer does, for a loader node that is new and for one that is trusted, in
one process.

    .venv/bin/python benchmarks/verified_credit_split.py [--epochs 5 --batch-size 32]

Prints the batches replayed, and the replays' seconds as a share of the loader's seconds
(the work they check; the trainer's own training is not counted, so the share of the whole
job is smaller still).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "backend"))


def main() -> None:
    import numpy as np

    from protocol.run import DataRequest, ModelRequest, WorkerPlan
    from ray_module.strategies.split.loader import LABELLED, BatchLoader, LoaderConfig
    from ray_module.strategies.split.samples import EpochPlan
    from ray_module.strategies.split.verification import LoaderChecker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    data = DataRequest("builtin", "digits")

    model = ModelRequest("classifier", "mlp")

    def loader(node_id: int) -> BatchLoader:
        built = BatchLoader(LoaderConfig(node_id, LABELLED, data, model, seed=5))
        built.check_started()
        return built

    node = loader(2)
    plan = EpochPlan(np.arange(node.describe().size), args.batch_size, True, 5)
    made, loader_s = [], 0.0
    for epoch in range(1, args.epochs + 1):
        order = plan.order(epoch)
        for index in range(plan.batches):
            ids = plan.batch(epoch, index, order)
            tic = time.perf_counter()
            made.append(((epoch, index), ids, node.batch(epoch, index, ids, augment=True)))
            loader_s += time.perf_counter() - tic
    print(f"digits, {len(made)} batches of {args.batch_size} over {args.epochs} epochs, "
          f"the loader's time {loader_s:.3f} s")  # fmt: skip
    print(f"{'loader node':<14}{'replayed':>14}{'replay s':>10}{'share':>8}{'invalid':>9}")
    for name, streak in (("new", 0), ("trusted", 1000)):
        verdicts: list = []
        replayer = loader(1)
        checker = LoaderChecker(5, 1, (WorkerPlan(2, 0, 1, 1, role="loader",
                                                  valid_streak=streak),),
                                lambda replayer=replayer: replayer, verdicts.append)  # fmt: skip
        tic = time.perf_counter()
        for step, ((epoch, index), ids, batch) in enumerate(made, start=1):
            checker.checked(step, ("train", epoch, index), ids, True, batch)
        replay_s = time.perf_counter() - tic
        invalid = sum(not v.valid for v in verdicts)
        print(f"{name:<14}{f'{len(verdicts)} / {len(made)}':>14}{replay_s:>10.3f}"
              f"{replay_s / loader_s:>8.1%}{invalid:>9}")  # fmt: skip


if __name__ == "__main__":
    main()

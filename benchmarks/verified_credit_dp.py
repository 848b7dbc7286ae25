"""The cost of trust for data_parallel: two ranks in one gloo group train a tiny GPT-2 with
DistributedDataParallel, the same steps three times in one sitting: without checks, with both
nodes new (every check point checked) and with both trusted (the 5% floor). A check point is
the first step after each checkpoint, as in ``strategies/data_parallel/rank.py``; a check is
one forward pass of the checked rank's batch on its validator, before the step's update.

    .venv/bin/python benchmarks/verified_credit_dp.py [--steps 300 --checkpoint-interval 10]

Prints each run's seconds per step and the replays' share of the ranks' compute time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "backend"))

WORLD = 2


def rank_main(rank: int, rendezvous: str, args: argparse.Namespace, streak, results) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from protocol.run import ModelRequest, WorkerPlan
    from ray_module.models.contract import Model
    from ray_module.models.registry import load_model
    from ray_module.strategies.data_parallel.verification import StepChecker, dropout_seed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=WORLD)  # fmt: skip
    model = load_model(ModelRequest("simple_transformer", "tiny-gpt2"))
    model.network.train()
    alone = Model(model.adapter, model.network, model.companion, model.device)
    model.network = DistributedDataParallel(model.network)
    optimizer = torch.optim.AdamW(model.network.parameters(), lr=5e-4)
    batches = torch.randint(0, 250, (WORLD, args.steps, args.batch_size, args.seq_len),
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    plans = [WorkerPlan(r + 1, 0, 1, 1, owner_id=10 * (r + 1), valid_streak=streak or 0)
             for r in range(WORLD)]  # fmt: skip
    checker = StepChecker(rank, plans, job_seed=1) if streak is not None else None
    replay_s = 0.0

    def replay(of_rank: int) -> float:
        nonlocal replay_s
        tic = time.perf_counter()
        torch.manual_seed(dropout_seed(1, step, of_rank))
        with torch.no_grad():
            value = float(alone.loss({"input_ids": batches[of_rank, step]}))
        replay_s += time.perf_counter() - tic
        return value

    dist.barrier()
    started = time.perf_counter()
    for step in range(args.steps):
        torch.manual_seed(dropout_seed(1, step, rank))
        loss = model.loss({"input_ids": batches[rank, step]})
        optimizer.zero_grad()
        loss.backward()
        if checker is not None and step % args.checkpoint_interval == 0:
            verdicts, stop = checker.check(step + 1, float(loss.detach()), replay)
            assert not stop and all(v.valid for v in verdicts), verdicts
        optimizer.step()
    dist.barrier()
    results.put((rank, time.perf_counter() - started, replay_s))
    dist.destroy_process_group()


def run(args: argparse.Namespace, streak: int | None) -> tuple[float, float]:
    """Seconds per step, and the replays' share of the ranks' time."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as scratch:
        ranks = [
            context.Process(
                target=rank_main, args=(r, f"{scratch}/rendezvous", args, streak, results)
            )
            for r in range(WORLD)
        ]
        for process in ranks:
            process.start()
        answers = [results.get(timeout=600) for _ in ranks]
        for process in ranks:
            process.join()
    wall = max(seconds for _, seconds, _ in answers)
    replays = sum(replay for _, _, replay in answers)
    return wall / args.steps, replays / sum(seconds for _, seconds, _ in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint-interval", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    baseline, _ = run(args, None)
    print(f"steps {args.steps}, checkpoint every {args.checkpoint_interval}, 2 ranks, 1 thread")
    print(f"{'nodes':<10}{'s/step':>10}{'vs none':>10}{'replays':>10}")
    print(f"{'no checks':<10}{baseline:>10.4f}{1.0:>10.2f}{0.0:>9.1%}")
    for name, streak in (("new", 0), ("trusted", 1000)):
        per_step, share = run(args, streak)
        print(f"{name:<10}{per_step:>10.4f}{per_step / baseline:>10.2f}{share:>9.1%}")


if __name__ == "__main__":
    main()

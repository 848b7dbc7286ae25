"""Verified credit for data_parallel, without Ray: three real processes in one gloo group, each
holding the same tiny GPT-2, check a step's claimed losses as the ranks do. An honest replay of
another rank's batch (its dropout seeded the same way) matches; a made-up loss is caught and
pinned on its own node, by the validator or, when the validator lies instead, by rank 0 as
referee; honest training checked at every step is never found invalid; checks are drawn at
each node's rate from another owner's rank."""

from __future__ import annotations

import json
import multiprocessing
import pathlib

import pytest

from protocol.run import ModelRequest, WorkerPlan
from protocol.trust import check_rate_for
from ray_module.strategies.data_parallel.verification import Finding, checks_at, judge

MODEL = ModelRequest("simple_transformer", "tiny-gpt2", None, {"n_layer": 1, "n_embd": 32})
NEW = {"valid_streak": 0}  # checked at every checkpoint
TRUSTED = {"valid_streak": 1000}


def plans(*owners_and_streaks: tuple[int, int]) -> list[WorkerPlan]:
    return [
        WorkerPlan(node_id=rank + 1, gpu=0, cpu_cores=1, memory_gb=1, owner_id=owner,
                   valid_streak=streak)
        for rank, (owner, streak) in enumerate(owners_and_streaks)
    ]  # fmt: skip


def test_each_new_rank_is_checked_by_another_owners_most_trusted_rank() -> None:
    workers = plans((10, 0), (20, 0), (10, 1000))
    # rank 0 (owner 10) goes to owner 20's rank; owner 20's to owner 10's most trusted rank
    assert {0: 1, 1: 2}.items() <= checks_at(7, 3, workers).items()
    assert checks_at(7, 3, workers) == checks_at(7, 3, workers)  # every rank draws the same
    # the trusted rank is checked at its low rate, the new ones at every check
    trusted = sum(2 in checks_at(7, step, workers) for step in range(400))
    assert 0 < trusted < 400 * check_rate_for(1000) * 2
    assert all(checks_at(7, step, workers).keys() >= {0, 1} for step in range(400))
    assert checks_at(7, 3, plans((10, 0))) == {}  # alone: nobody to check it


def test_the_referee_decides_a_dispute_against_whichever_side_it_contradicts() -> None:
    assert judge(1, 2, 3.0, 3.0, None) == [Finding(1, True, 2)]
    assert judge(1, 2, 1.0, 3.0, 3.0) == [Finding(1, False, 2, "its loss 1 is 3 when replayed")]
    lying_validator = judge(1, 2, 3.0, 1.0, 3.0)
    assert [(f.rank, f.valid) for f in lying_validator] == [(1, True), (2, False)]
    assert [(f.rank, f.valid, f.by_rank) for f in judge(1, 2, 1.0, 2.0, 3.0)] == [(1, False, 0)]
    with pytest.raises(ValueError):
        judge(1, 2, 1.0, 3.0, None)


LIES = ("nobody", "claim 2", "replay 1")
TRAINING_STEPS = 8  # who lies: rank 2 in its claim, rank 1 in a replay


def found_in(verdicts: list) -> list[list]:
    return [[v.node_id, v.valid, v.validator_node_id] for v in verdicts]


def one_rank(rank: int, rendezvous: str, results) -> None:
    """A rank's step, once per lie: its claimed loss on its batch, then the collective check."""
    import torch
    import torch.distributed as dist

    from ray_module.models.registry import load_model
    from ray_module.strategies.data_parallel.verification import StepChecker, dropout_seed

    torch.set_num_threads(1)
    # A file store: no port to pick that something else may take first.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=3)
    try:
        model = load_model(MODEL)
        model.network.train()  # dropout on: the replay must draw the same masks
        batches = [torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(r))
                   for r in range(3)]  # fmt: skip
        step, job = 4, 99
        workers = plans((10, 0), (20, 0), (30, 0))

        def loss_of(of_rank: int) -> float:
            torch.manual_seed(dropout_seed(job, step, of_rank))
            with torch.no_grad():
                return float(model.loss({"input_ids": batches[of_rank]}))

        for lie in LIES:
            claimed = loss_of(rank)
            if lie == f"claim {rank}":
                claimed *= 0.5  # a loss that looks like progress, no work behind it

            def replay(of_rank: int, lie: str = lie) -> float:
                value = loss_of(of_rank)
                return value + 1.0 if lie == f"replay {rank}" else value

            delivered = pathlib.Path(f"{rendezvous}.{lie.replace(' ', '-')}")

            def deliver(verdicts: list, delivered: pathlib.Path = delivered) -> None:
                delivered.write_text(json.dumps(found_in(verdicts)))

            checker = StepChecker(rank, workers, job, deliver=deliver if rank == 0 else None)
            verdicts, stop = checker.check(step, claimed, replay)
            # rank 0 delivered its verdicts before any rank heard whether to stop
            heard_after = json.loads(delivered.read_text()) if delivered.exists() else None
            results.put((lie, rank, (found_in(verdicts), stop, heard_after)))

        # No false positives while training: DDP's forward and backward on every rank, each
        # step checked on the plain network before the update, as the ranks do.
        from torch.nn.parallel import DistributedDataParallel

        from ray_module.models.contract import Model

        alone = Model(model.adapter, model.network, model.companion, model.device)
        model.network = DistributedDataParallel(model.network)
        optimizer = torch.optim.AdamW(model.network.parameters(), lr=1e-3)
        checker, honest = StepChecker(rank, workers, job), []
        for step in range(TRAINING_STEPS):
            torch.manual_seed(dropout_seed(job, step, rank))
            loss = model.loss({"input_ids": batches[rank] + step})
            optimizer.zero_grad()
            loss.backward()

            def replay(of_rank: int, step: int = step) -> float:
                torch.manual_seed(dropout_seed(job, step, of_rank))
                with torch.no_grad():
                    return float(alone.loss({"input_ids": batches[of_rank] + step}))

            verdicts, stop = checker.check(step + 1, float(loss.detach()), replay)
            honest += [v.valid for v in verdicts] + [not stop]
            optimizer.step()
        results.put(("training", rank, (len(honest), all(honest))))
        # Every rank done before any tears its group down: a rank that left while another
        # still sent aborted it at exit (gloo's threads), though every answer had arrived.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_group(rendezvous: str) -> dict[str, dict[int, tuple]]:
    """What each rank returned, by lie."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=one_rank, args=(r, rendezvous, results)) for r in range(3)]
    for process in ranks:
        process.start()
    answers: dict[str, dict[int, list]] = {}
    for _ in range(len(ranks) * (len(LIES) + 1)):
        lie, rank, verdicts = results.get(timeout=120)
        answers.setdefault(lie, {})[rank] = verdicts
    for process in ranks:
        process.join(timeout=30)
        assert process.exitcode == 0
    return answers


@pytest.mark.slow
def test_honest_ranks_replay_each_others_losses_exactly_and_a_made_up_one_is_caught(
    tmp_path,
) -> None:
    answers = run_group(str(tmp_path / "rendezvous"))

    def judged(lie: str) -> list[tuple[int, bool, int]]:
        """Rank 0's verdicts; the others get none, and all three agree whether to stop, each
        hearing it after rank 0 had delivered those verdicts."""
        (found, stop, delivered), *others = (answers[lie][rank] for rank in range(3))
        assert delivered == found
        assert all(other == ([], stop, found) for other in others), answers[lie]
        assert stop == (not all(valid for _, valid, _ in found))
        return [tuple(verdict) for verdict in found]

    # New nodes of three owners: each rank is checked; validator = lowest other node id.
    assert judged("nobody") == [(1, True, 2), (2, True, 1), (3, True, 1)]
    # Rank 2 (node 3) halves its loss: its validator (node 1) catches it, no referee needed.
    assert judged("claim 2") == [(1, True, 2), (2, True, 1), (3, False, 1)]
    # Rank 1 (node 2) lies in its replay of rank 0: rank 0 referees, the liar is invalid.
    assert judged("replay 1") == [(1, True, 0), (2, False, 1), (2, True, 1), (3, True, 1)]
    # Eight steps of honest training, every rank checked at every step: rank 0 found all
    # three valid at each, and no rank was told to stop.
    assert answers["training"][0] == (TRAINING_STEPS * 4, True)
    assert answers["training"][1] == answers["training"][2] == (TRAINING_STEPS, True)

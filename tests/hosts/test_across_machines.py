"""DistLM on separate machines (issue 20): a gateway host and two node hosts that share no
disk and reach each other only over their own addresses. The gateway runs no Ray; each node's
agent runs its jobs on a Ray of its own and sends models and checkpoints to the gateway."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.hosts.network import Host
from tests.hosts.platform import Platform, running_platform, wait_until_finished
from tests.metering_checks import assert_each_step_paid_once, stream
from tests.paths import BACKEND
from tests.polling import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ES_JOB = {
    "model_config": {"type": "char_rnn", "model_name": "rnn"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text", "max_samples": 200},
    "training_config": {"steps": 40, "population": 16, "checkpoint_interval": 10},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 0.5},
    "max_runtime_s": 600,
}
FEDAVG_JOB = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits", "validation_split": 0.2},
    "training_config": {"strategy": "fedavg", "rounds": 4, "clients": 2, "num_workers": 2,
                        "local_epochs": 1, "checkpoint_interval": 2},
    "requirements": {"gpu": 0, "cpu_cores": 4, "memory": 2},  # a whole node per worker
    "max_runtime_s": 600,
}  # fmt: skip
DATA_PARALLEL_JOB = {
    "model_config": {"type": "simple_transformer", "model_name": "tiny-gpt2"},
    "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text", "max_samples": 100},
    "training_config": {"max_steps": 6, "batch_size": 4, "seq_len": 32, "num_workers": 2,
                        "checkpoint_interval": 3},
    "requirements": {"gpu": 0, "cpu_cores": 4, "memory": 2},  # a whole node per worker
    "max_runtime_s": 600,
}  # fmt: skip
SPLIT_JOB = {
    "model_config": {"type": "classifier", "model_name": "mlp"},
    "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 400},
    "training_config": {"strategy": "split", "epochs": 2,  # too big for one node together
                        "loader": {"cpu_cores": 2, "memory": 0.25}},
    "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 0.25},
    "max_runtime_s": 600,
}  # fmt: skip


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(tmp_path_factory.mktemp("across")) as running:
        yield running


def model_files(platform: Platform, job_id: int) -> set[str]:
    answer = platform.http.get(f"/jobs/{job_id}/artifacts", headers=platform.user.headers)
    assert answer.status_code == 200, answer.text
    with tarfile.open(fileobj=io.BytesIO(answer.content)) as archive:
        return {Path(name).name for name in archive.getnames()}


# -- cheaters: first in the module, while both nodes are new (checked at every step); the
# loader cheater's repeated invalid batches suspend its node, which an admin approves again.

STRATEGIES = BACKEND / "ray_module" / "strategies"
HONEST_PAIRS = "losses.append(self.evaluator.pair_losses(theta, ids, index))"
MADE_UP_PAIRS = "losses.append((center * 0.97, center * 1.03))  # made up: no work done"
HONEST_FIT = "return self.train_client(self.shards[client], client, round_number, weights)"
UNTRAINED_FIT = (
    'return {"client": client, "node_id": self.config.node_id, "weights": weights, '
    '"num_examples": len(self.shards[client]), "train_loss": 0.1, "seconds": 5.0}  # untrained'
)

HONEST_CLAIM = "checker.check(step + 1, float(loss.detach()), replay)"
LATER_MADE_UP_CLAIM = (  # honest at its first check, then a loss that looks like progress
    "checker.check(step + 1, float(loss.detach()) * (0.5 if step else 1.0), replay)"
)

HONEST_BATCH = 'arrays["ids"] = np.asarray(ids, dtype=np.int64)'
NOISE_BATCH = (
    'arrays["features"] = np.random.default_rng().normal(size=arrays["features"].shape)'
    ".astype(np.float32)  # noise\n        " + HONEST_BATCH
)


@contextmanager
def cheating(host: Host, source: Path, honest: str, cheat: str) -> Iterator[None]:
    """The host's owner edits the code on their machine (``honest`` becomes ``cheat`` in
    ``source``): a copy, bound over the original in the host's own mount namespace only."""
    text = source.read_text()
    assert honest in text
    copy = Path("/tmp/cheat") / source.name
    host.path(copy).parent.mkdir(parents=True, exist_ok=True)
    host.path(copy).write_text(text.replace(honest, cheat))
    host.run(["mount", "--bind", str(copy), str(source)], timeout_s=10, check=True)
    try:
        yield
    finally:
        host.run(["umount", str(source)], timeout_s=10, check=True)


HONEST_UPDATE = "        loss.backward()\n        optimizer.step()\n"
SKIPPED_UPDATES = (  # half the work, all of it billed
    "        if self.step % 2:  # every other update skipped\n"
    "            loss.backward()\n            optimizer.step()\n"
)


def audit_of(platform: Platform, job_id: int) -> dict:
    """The audit job the gateway queued for ``job_id``, once it has ended."""
    user = platform.user

    def queued() -> dict | None:
        jobs = user.call("GET", "/jobs", params={"limit": 100})["items"]
        return next((j for j in jobs if j["name"].startswith(f"audit of job {job_id},")), None)

    audit = wait_for(queued, timeout_s=60, what=f"an audit of job {job_id}")
    return wait_until_finished(user, audit["id"])


def settled_credit(platform: Platform, job_id: int) -> dict:
    """The job once no credit of it waits any more (an audit has released or voided it)."""
    return wait_for(
        lambda: (job := platform.user.job(job_id))["pending_credit"] == 0 and job,
        timeout_s=180,
        what=lambda: platform.user.job(job_id),
    )


def honest_and_cheat(platform: Platform) -> tuple[int, Host, int]:
    """The honest node's id, and the host a cheater test tampers with and its node's id."""
    honest_host, cheat_host = platform.net.nodes
    return platform.node_id(honest_host), cheat_host, platform.node_id(cheat_host)


def assert_caught_and_unpaid(platform: Platform, done: dict, honest: int, cheat: int,
                             before: dict) -> None:  # fmt: skip
    """The cheater was caught (logged), earned nothing and lost reliability; the honest
    node was validated and paid."""
    user, owner = platform.user, platform.owner
    assert done["status"] == "succeeded", done["status_reason"]
    logs = user.call("GET", f"/jobs/{done['id']}/logs")["items"]
    caught = [line["message"] for line in logs if "failed validation" in line["message"]]
    assert caught and all(m.startswith(f"node {cheat}:") for m in caught), caught
    assert [part["node_id"] for part in done["earnings"]] == [honest]
    trust = {n: owner.call("GET", f"/nodes/{n}")["trust"] for n in (honest, cheat)}
    assert trust[cheat]["results_invalid"] == before[cheat]["results_invalid"] + 1
    assert trust[honest]["results_valid"] > before[honest]["results_valid"]
    assert trust[honest]["results_invalid"] == before[honest]["results_invalid"]
    assert trust[cheat]["reliability"] < trust[honest]["reliability"]


def test_a_node_whose_es_worker_makes_up_losses_is_caught_earns_nothing_and_the_job_learns(
    platform: Platform,
) -> None:
    user = platform.user
    honest, cheat_host, cheat = honest_and_cheat(platform)
    before = {n: platform.owner.call("GET", f"/nodes/{n}")["trust"] for n in (honest, cheat)}
    body = {**ES_JOB, "training_config": {"steps": 30, "population": 16, "num_workers": 2,
                                          "checkpoint_interval": 10},
            "requirements": {"gpu": 0, "cpu_cores": 4, "memory": 1}}  # fmt: skip
    with cheating(cheat_host, STRATEGIES / "es" / "worker.py", HONEST_PAIRS, MADE_UP_PAIRS):
        job = user.call("POST", "/jobs/submit", json=body)
        done = wait_until_finished(user, job["id"])
    # Caught at its first checked step (a new node is checked at every one): its answers
    # were left out and its worker stopped; it is paid nothing, the honest node is.
    assert_caught_and_unpaid(platform, done, honest, cheat, before)
    assert str(cheat) not in done["usage"]
    # The job learned as an honest run does: its loss fell, on the honest node's work.
    series = user.call("GET", f"/metrics/training/{job['id']}")["series"]
    losses = [point["values"]["loss"] for point in series if "loss" in point["values"]]
    assert losses[-1] < losses[0] - 0.3, losses


def test_a_fedavg_client_that_sends_back_an_untrained_update_is_caught_and_left_out(
    platform: Platform,
) -> None:
    user = platform.user
    honest, cheat_host, cheat = honest_and_cheat(platform)
    before = {n: platform.owner.call("GET", f"/nodes/{n}")["trust"] for n in (honest, cheat)}
    with cheating(cheat_host, STRATEGIES / "fedavg" / "client.py", HONEST_FIT, UNTRAINED_FIT):
        body = {**FEDAVG_JOB, "training_config": {**FEDAVG_JOB["training_config"], "rounds": 10}}
        job = user.call("POST", "/jobs/submit", json=body)
        done = wait_until_finished(user, job["id"])
    assert_caught_and_unpaid(platform, done, honest, cheat, before)
    # Its update was left out of round 1's average; the honest client's rounds reach the
    # accuracy an honest run of the digits MLP does (90%: tests/.../test_fedavg_ray.py).
    series = user.call("GET", f"/metrics/training/{job['id']}")["series"]
    rounds = [point["values"] for point in series if point["step"] > 0]
    assert rounds[0]["clients_returned"] == 2 and rounds[0]["clients_accepted"] == 1
    assert max(r["validation_accuracy"] for r in rounds) >= 0.9, rounds[-1]


def test_a_loader_that_sends_noise_is_caught_and_the_trainer_learns_from_the_true_batches(
    platform: Platform,
) -> None:
    user, owner = platform.user, platform.owner
    honest, cheat_host, cheat = honest_and_cheat(platform)
    before = owner.call("GET", f"/nodes/{cheat}")["trust"]
    loader = STRATEGIES / "split" / "loader.py"
    with cheating(cheat_host, loader, HONEST_BATCH, NOISE_BATCH):
        job = user.call("POST", "/jobs/submit", json=SPLIT_JOB)
        done = wait_until_finished(user, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    # The trainer (on the trusted node, placed first) made sampled batches again: the
    # loader's noise was caught, its work in the job refused, and the trainer paid.
    stages = {node: set(figures["stages"]) for node, figures in done["usage"].items()}
    assert stages == {str(honest): {"trainer"}, str(cheat): {"loader"}}, stages
    logs = user.call("GET", f"/jobs/{job['id']}/logs")["items"]
    caught = [line["message"] for line in logs if "failed validation" in line["message"]]
    assert caught and all(m.startswith(f"node {cheat}:") for m in caught), caught
    assert "features differs" in caught[0]
    assert done["voided"] > 0
    trust = owner.call("GET", f"/nodes/{cheat}")["trust"]
    assert trust["results_invalid"] >= before["results_invalid"] + 3
    # Invalid again and again: suspended, sent back to an admin with the reason.
    node = owner.call("GET", f"/nodes/{cheat}")
    assert node["approval"] == "pending", node
    assert "invalid results in a row" in trust["suspended_reason"]
    platform.admin.call("POST", f"/nodes/{cheat}/approve")  # on probation again
    assert owner.call("GET", f"/nodes/{cheat}")["trust"]["on_probation"]
    wait_for(lambda: platform.node_status(cheat_host) == "online", what="the node back online")
    # The trainer is paid, once its audit (if this checkpoint was drawn for one: it runs on
    # the other node, now approved again) has released its credit.
    paid = settled_credit(platform, job["id"])
    assert [part["node_id"] for part in paid["earnings"]] == [honest], paid["earnings"]
    # It trained and scored on the batches as they should have been: as accurate as an
    # honest run of this job (0.5, then 0.75, measured), where noise would give about 0.1.
    series = user.call("GET", f"/metrics/training/{job['id']}")["series"]
    accuracy = [p["values"]["validation_accuracy"] for p in series
                if "validation_accuracy" in p["values"]]  # fmt: skip
    assert accuracy[-1] >= 0.7, accuracy


def test_a_data_parallel_rank_that_reports_a_made_up_loss_is_caught_and_its_job_waits_without_it(
    platform: Platform,
) -> None:
    """After the loader cheater's node is approved again (its invalid streak reset)."""
    user, owner = platform.user, platform.owner
    honest, cheat_host, cheat = honest_and_cheat(platform)
    before = {n: owner.call("GET", f"/nodes/{n}")["trust"] for n in (honest, cheat)}
    rank = STRATEGIES / "data_parallel" / "rank.py"
    with cheating(cheat_host, rank, HONEST_CLAIM, LATER_MADE_UP_CLAIM):
        job = user.call("POST", "/jobs/submit", json=DATA_PARALLEL_JOB)
        # Honest at the first step, paid at the checkpoint (step 3), caught at the step
        # after it: the attempt stops (its gradients are in everyone's sum) and the job goes
        # back to the queue without the node; the other node alone is too small for it.
        queued = wait_for(
            lambda: (
                (found := user.job(job["id"]))["status"] == "queued"
                and "failed validation" in found["status_reason"]
                and found
            ),
            timeout_s=300,
            every_s=0.5,
            what=lambda: user.job(job["id"]),
        )
    assert "failed validation" in queued["status_reason"], queued["status_reason"]
    user.call("POST", f"/jobs/{job['id']}/cancel")
    done = wait_until_finished(user, job["id"])
    logs = user.call("GET", f"/jobs/{job['id']}/logs")["items"]
    caught = [line["message"] for line in logs if "failed validation" in line["message"]]
    assert caught and caught[0].startswith(f"node {cheat}:"), caught
    assert [part["node_id"] for part in done["earnings"]] == [honest], done["earnings"]
    assert done["voided"] > 0
    trust = {n: owner.call("GET", f"/nodes/{n}")["trust"] for n in (honest, cheat)}
    assert trust[cheat]["results_invalid"] == before[cheat]["results_invalid"] + 1
    assert trust[honest]["results_valid"] >= before[honest]["results_valid"] + 2
    assert trust[honest]["results_invalid"] == before[honest]["results_invalid"]


def whole_node_job(platform: Platform, node_id: int) -> dict:
    """A long ES job holding the whole of node ``node_id``, running (submitted again until
    it is placed there: a node whose attempt was just lost takes no work until its agent
    asks again, so the first may go to the other node)."""
    user = platform.user
    body = {**ES_JOB, "training_config": {"steps": 5000, "population": 16},
            "requirements": {"gpu": 0, "cpu_cores": 2, "memory": 2}}  # fmt: skip
    for _ in range(5):
        job = user.call("POST", "/jobs/submit", json=body)
        running = wait_for(
            lambda job=job: (found := user.job(job["id"]))["status"] == "running" and found,
            what="the blocker to run",
        )
        if running["placement"][0]["node_id"] == node_id:
            return job
        user.call("POST", f"/jobs/{job['id']}/cancel")
        wait_until_finished(user, job["id"])
        time.sleep(2)  # the node's agent asks again meanwhile
    raise AssertionError(f"no job could be placed on node {node_id}")


def test_a_split_trainer_that_skips_updates_is_audited_on_the_other_host_and_earns_nothing(
    platform: Platform,
) -> None:
    """After the data_parallel cheater (its node on probation: each of its trainer's
    checkpoints is drawn for an audit). The trainer drives its own job, so only an audit job,
    in a cluster of its own on the other host, can check it."""
    user, owner = platform.user, platform.owner
    honest, cheat_host, cheat = honest_and_cheat(platform)
    before = owner.call("GET", f"/nodes/{cheat}")["trust"]
    # The trusted node busy, the whole job goes to the other one.
    blocker = whole_node_job(platform, honest)
    one_node = {**SPLIT_JOB, "training_config": {
        **SPLIT_JOB["training_config"], "loader": {"cpu_cores": 1, "memory": 0.25}}}  # fmt: skip
    worker = STRATEGIES / "split" / "worker.py"
    with cheating(cheat_host, worker, HONEST_UPDATE, SKIPPED_UPDATES):
        job = user.call("POST", "/jobs/submit", json=one_node)
        wait_for(lambda: user.job(job["id"])["status"] == "running", what="the split job to run")
        user.call("POST", f"/jobs/{blocker['id']}/cancel")
        done = wait_until_finished(user, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    assert set(done["usage"]) == {str(cheat)}, done["usage"]
    # Settled, the trainer's credit waiting for its audit.
    assert cheat not in [part["node_id"] for part in done["earnings"]]
    assert done["pending_credit"] > 0
    audit = audit_of(platform, job["id"])
    assert audit["status"] == "succeeded", audit["status_reason"]
    assert set(audit["usage"]) == {str(honest)}, audit["usage"]
    assert audit["cost_so_far"] == 0
    after = settled_credit(platform, job["id"])
    assert after["voided"] > 0 and after["earnings"] == [], after
    logs = user.call("GET", f"/jobs/{job['id']}/logs")["items"]
    caught = [line["message"] for line in logs if "failed validation" in line["message"]]
    assert caught and caught[0].startswith(f"node {cheat}:"), caught
    assert "trained again from its checkpoint" in caught[0], caught
    trust = owner.call("GET", f"/nodes/{cheat}")["trust"]
    assert trust["results_invalid"] == before["results_invalid"] + 1
    # Its model cannot be used: the job cost the user nothing in the end (all of it ran on
    # the cheat's node: voided; anything else would be compensated), and it is trained again
    # for them on the honest host.
    assert after["charged"] - after["compensated"] == pytest.approx(0), after
    redo = wait_until_finished(user, after["audits"][0]["recompute_job_id"])
    assert redo["status"] == "succeeded", redo["status_reason"]
    assert set(redo["usage"]) == {str(honest)}, redo["usage"]


def test_every_mode_runs_on_the_node_hosts_and_its_model_comes_from_the_gateway(
    platform: Platform,
) -> None:
    user = platform.user
    bodies = {
        "es": ES_JOB,
        "fedavg": FEDAVG_JOB,
        "data_parallel": DATA_PARALLEL_JOB,
        "split": SPLIT_JOB,
    }
    jobs = {mode: user.call("POST", "/jobs/submit", json=body) for mode, body in bodies.items()}
    # While they run, the gateway's host runs no Ray at all; the nodes' hosts do.
    wait_for(
        lambda: any(user.job(j["id"])["status"] == "running" for j in jobs.values()),
        what="a job to run",
    )
    assert platform.ray_processes_on(platform.net.gateway) == []
    assert all(platform.ray_processes_on(host) for host in platform.net.nodes)

    # The split job's model is checked by a validate and an infer job as soon as it is
    # saved, while the other modes still run.
    split_done = wait_until_finished(user, jobs["split"]["id"])
    assert split_done["status"] == "succeeded", split_done["status_reason"]
    checks = [user.call("POST", "/jobs/submit", json=body)
              for body in validate_and_infer(split_done["id"])]  # fmt: skip
    done = {mode: wait_until_finished(user, job["id"]) for mode, job in jobs.items()}
    node_ids = {str(platform.node_id(host)) for host in platform.net.nodes}
    for mode, job in done.items():
        assert job["status"] == "succeeded", (mode, job["status_reason"], user.job(job["id"]))
        assert job["cost_so_far"] > 0
    # The two-node jobs ran on both hosts, in a Ray cluster of their own, and paid both.
    for mode in ("fedavg", "data_parallel"):
        assert set(done[mode]["usage"]) == node_ids, (mode, done[mode]["usage"])
    # Split's loaders ran on one host and its trainer on the other.
    stages = {node: set(figures["stages"]) for node, figures in done["split"]["usage"].items()}
    assert sorted(map(sorted, stages.values())) == [["loader"], ["trainer"]], stages
    assert "char_rnn_config.json" in model_files(platform, done["es"]["id"])
    assert "config.json" in model_files(platform, done["data_parallel"]["id"])
    assert "config.json" in model_files(platform, done["fedavg"]["id"])
    assert "config.json" in model_files(platform, done["split"]["id"])

    # The validate and infer jobs started from the split job's model: each node fetched it
    # from the gateway, and the results came back there.
    validated, inferred = (wait_until_finished(user, job["id"]) for job in checks)
    assert validated["status"] == inferred["status"] == "succeeded", (validated, inferred)
    scores = user.call("GET", f"/jobs/{validated['id']}/results")
    assert 0 < scores["samples"] < 400
    assert sum(map(sum, scores["confusion_matrix"])) == scores["samples"]
    rows = platform.http.get(f"/jobs/{inferred['id']}/results", headers=user.headers).text
    predictions = [json.loads(line) for line in rows.splitlines()]
    assert len(predictions) == 400
    assert all(len(row["top_k"]) == 2 for row in predictions)

    # The jobs' own clusters are gone once their agents have stopped them (at their next ask
    # after the job ended), and left no note for a later `ray.init()` to follow: on each
    # node host the only Ray pointer left, if any, is to the node's warm Ray.
    for host in platform.net.nodes:
        agent_log = (platform.root / f"{host.name}.log").read_text(errors="replace")
        warm = re.search(r"this node's Ray is up at (\S+)", agent_log)
        assert warm, agent_log[-3000:]
        pointer = host.path("/tmp/ray/ray_current_cluster")
        wait_for(
            lambda pointer=pointer, warm=warm: (
                not pointer.exists() or pointer.read_text().strip() == warm.group(1)
            ),
            timeout_s=30,
            what=lambda pointer=pointer: f"{pointer} to be forgotten: {pointer.read_text()}",
        )


def validate_and_infer(source: int) -> tuple[dict, dict]:
    """A validate and an infer job of the digits classifier trained by job ``source``."""
    validate = {
        "model_config": {"type": "classifier", "model_name": f"job:{source}"},
        "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 400,
                        "split": "validation"},
        "task": "validate",
        "training_config": {"loader": {"cpu_cores": 1, "memory": 0.25}},
        "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 0.25},
    }  # fmt: skip
    infer = {
        **validate,
        "data_config": {"data_source": "builtin", "dataset_name": "digits", "max_samples": 400},
        "task": "infer",
        "inference_config": {"top_k": 2},
    }
    return validate, infer


def checkpointed_es_job(platform: Platform, steps: int) -> tuple[dict, Host]:
    """A running ES job (checkpoint every 20 steps) past its first checkpoint, and the host
    it runs on."""
    body = {**ES_JOB, "training_config": {"steps": steps, "population": 32,
                                          "checkpoint_interval": 20}}  # fmt: skip
    job = platform.user.call("POST", "/jobs/submit", json=body)
    wait_for(
        lambda: last_step(platform, job["id"]) > 25,
        what=lambda: platform.user.job(job["id"]),
    )
    running = platform.user.job(job["id"])
    return running, platform.host_of(running["placement"][0]["node_id"])


def last_step(platform: Platform, job_id: int) -> int:
    series = platform.user.call("GET", f"/metrics/training/{job_id}")["series"]
    return max((point["step"] for point in series), default=0)


def test_a_node_cut_off_mid_job_its_job_resumes_on_the_other_host_and_is_paid_once(
    platform: Platform,
) -> None:
    user = platform.user
    job, lost = checkpointed_es_job(platform, steps=80)
    (lost_id,) = {slot["node_id"] for slot in job["placement"]}
    agent = platform.agents[lost.name]
    lost.link_down()
    cut_at = time.monotonic()
    try:
        wait_for(
            lambda: (
                user.job(job["id"])["attempts"] == 2 and user.job(job["id"])["status"] == "running"
            ),
            timeout_s=120,
            what=lambda: user.job(job["id"]),
        )
        elsewhere_after = time.monotonic() - cut_at
        assert platform.node_status(lost) == "offline"
    finally:
        lost.link_up()
    done = wait_until_finished(user, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    assert str(lost_id) in done["usage"]  # paid for what it saved before the cut
    saved = assert_each_step_paid_once(platform.http, user.headers, done)
    assert saved >= 20
    # The agent was never restarted: the link came back and it answers again.
    wait_for(lambda: platform.node_status(lost) == "online", timeout_s=60, what="rejoin")
    assert agent.poll() is None
    print(f"link down -> running elsewhere: {elsewhere_after:.1f} s")


def usage_steps_paid_once(platform: Platform, job: dict) -> list[int]:
    """For a job that ran one attempt: each step's usage appears once in its stream, and
    what the job charged is the sum of it."""
    items = stream(platform.http, platform.user.headers, job["id"])
    usage = [item["data"] for item in items if item["event"] == "usage"]
    steps = [part["step"] for part in usage]
    assert len(steps) == len(set(steps)), sorted(steps)
    charged = sum(f["cpu_core_seconds"] for f in job["usage"].values())
    assert charged == pytest.approx(sum(part["cpu_core_seconds"] for part in usage))
    return steps


def driver_log(host: Host, job: dict) -> str:
    """The job's driver log, on the disk of the node ``host`` that drives it."""
    name = f"job-{job['id']}-attempt-{job['attempts']}.log"
    path = host.path(f"/tmp/distlm/node-work/logs/{name}")
    return path.read_text(errors="replace") if path.exists() else ""


def test_the_gateway_killed_and_started_again_its_nodes_reconnect_and_jobs_go_on(
    platform: Platform,
) -> None:
    user = platform.user
    running, host = checkpointed_es_job(platform, steps=80)
    job = running
    platform.kill_gateway()
    # The driver goes on training and keeps what it cannot send until the gateway is back.
    wait_for(
        lambda: "gateway unreachable" in driver_log(host, running),
        timeout_s=60,
        what=lambda: driver_log(host, running)[-2000:],
    )
    platform.start_gateway()
    done = wait_until_finished(user, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["attempts"] == 1  # the attempt outlived the gateway
    assert sorted(usage_steps_paid_once(platform, done)) == list(range(1, 81))
    for host in platform.net.nodes:
        wait_for(lambda host=host: platform.node_status(host) == "online", what="reconnect")
    assert all(agent.poll() is None for agent in platform.agents.values())
    assert platform.ray_processes_on(platform.net.gateway) == []


def test_an_agent_killed_and_started_again_gives_up_its_lost_attempt_which_resumes(
    platform: Platform,
) -> None:
    user = platform.user
    job, host = checkpointed_es_job(platform, steps=80)
    agent = platform.agents[host.name]
    os.killpg(agent.pid, signal.SIGKILL)  # no goodbye: its driver and Ray go down with it
    agent.wait(timeout=10)
    wait_for(lambda: not platform.ray_processes_on(host), timeout_s=30, what="its Ray gone")
    platform.start_agent(host)  # the same machine, the same credential file
    done = wait_until_finished(user, job["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["attempts"] == 2  # the lost driver was given up, not started again
    saved = assert_each_step_paid_once(platform.http, user.headers, done)
    assert saved >= 20
    wait_for(lambda: platform.node_status(host) == "online", what="the node back online")


def test_another_jobs_credential_a_wrong_hash_and_a_banned_nodes_agent_are_refused(
    platform: Platform,
) -> None:
    user, owner, admin, http = platform.user, platform.owner, platform.admin, platform.http
    body = {**ES_JOB, "training_config": {"steps": 100, "population": 32,
                                          "checkpoint_interval": 20}}  # fmt: skip
    first, second = (user.call("POST", "/jobs/submit", json=body) for _ in range(2))
    wait_for(
        lambda: last_step(platform, first["id"]) > 20 and last_step(platform, second["id"]) > 0,
        what=lambda: (user.job(first["id"]), user.job(second["id"])),
    )
    running = user.job(first["id"])
    driver_node = running["placement"][0]["node_id"]
    runs = owner.call("POST", f"/nodes/{driver_node}/runs", json={})["runs"]
    token = next(r["run_token"] for r in runs if r["job_id"] == first["id"])
    as_driver = {"Authorization": f"Bearer {token}"}

    # Its credential is for its own job only.
    answer = http.post(
        f"/runs/{second['id']}/events", headers=as_driver, json={"attempt": 1, "events": []}
    )
    assert answer.status_code == 403, answer.text

    # An upload whose bytes do not hash as announced is refused, and the checkpoint the
    # gateway holds stays a whole one of the job's (not the upload's one file).
    bogus = io.BytesIO()
    with tarfile.open(fileobj=bogus, mode="w") as archive:
        info = tarfile.TarInfo("state.json")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"{}"))
    answer = http.put(
        f"/runs/{first['id']}/checkpoint",
        params={"attempt": 1},
        headers={**as_driver, "X-Content-SHA256": "0" * 64},
        content=bogus.getvalue(),
    )
    assert answer.status_code == 422, answer.text
    held = http.get(f"/runs/{first['id']}/checkpoint", params={"attempt": 1}, headers=as_driver)
    assert held.status_code == 200, held.text
    with tarfile.open(fileobj=io.BytesIO(held.content)) as archive:
        assert "arrays.safetensors" in archive.getnames()
        state = json.load(archive.extractfile("state.json"))
    assert state["step"] >= 20

    # A banned node's agent is refused and stops; its job resumes on the other host, and
    # the old attempt's credential is refused from then on.
    banned_host = platform.host_of(driver_node)
    admin.call("POST", f"/nodes/{driver_node}/ban")
    agent = platform.agents[banned_host.name]
    wait_for(lambda: agent.poll() is not None, timeout_s=60, what="the banned agent to stop")
    assert agent.returncode != 0
    assert "banned" in platform.log(f"{banned_host.name}.log")
    done = wait_until_finished(user, first["id"])
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["attempts"] == 2
    assert {slot["node_id"] for slot in done["placement"] or []} <= {
        platform.node_id(h) for h in platform.net.nodes
    } - {driver_node}
    late = http.post(
        f"/runs/{first['id']}/events", headers=as_driver, json={"attempt": 1, "events": []}
    )
    assert late.status_code in (403, 409), late.text
    assert wait_until_finished(user, second["id"])["status"] == "succeeded"

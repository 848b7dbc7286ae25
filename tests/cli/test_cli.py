"""The `distlm` command line and the Python client against the real launcher, as a user runs
them: subprocesses, a pseudo-terminal for the progress bar, no mocks."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.agent.gateway_process import OWNER, OWNER_PASSWORD, Gateway, running_gateway
from tests.job_specs import small_split_job

pytestmark = [pytest.mark.slow]

DISTLM = str(Path(sys.executable).with_name("distlm"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    with running_gateway(tmp_path_factory.mktemp("cli")) as running:
        yield running


@pytest.fixture
def home(tmp_path: Path, gateway: Gateway) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTLM_", "RAY_"))}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"),
               DISTLM_URL=gateway.base, COLUMNS="120")  # fmt: skip
    return env


def distlm(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DISTLM, *args], env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def logged_in(env: dict) -> dict:
    done = distlm(env, "login", "--username", OWNER, "--password", OWNER_PASSWORD)
    assert done.returncode == 0, done.stderr
    return env


def spec_file(tmp_path: Path, body: dict, name: str = "job.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return str(path)


def test_login_keeps_a_private_token_file_and_bad_tokens_exit_4(home: dict) -> None:
    logged_in(home)
    stored = Path(home["XDG_CONFIG_HOME"]) / "distlm" / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert distlm(home, "whoami").stdout.startswith(OWNER)
    assert distlm({**home, "DISTLM_TOKEN": "not-a-token"}, "jobs").returncode == 4
    wrong = distlm(home, "login", "--username", OWNER, "--password", "wrong-password")
    assert wrong.returncode == 4
    assert distlm(home, "logout").returncode == 0 and not stored.exists()
    assert distlm(home, "jobs").returncode == 4  # not logged in


def test_submit_and_watch_exits_by_how_the_job_ended(
    home: dict, gateway: Gateway, tmp_path: Path
) -> None:
    logged_in(home)
    done = distlm(home, "submit", spec_file(tmp_path, small_split_job(2)), "--yes", "--watch")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "validation_accuracy:" in done.stdout
    assert "holds up to" in done.stderr  # cost and balance shown before submitting

    missing = small_split_job(1, data_config={"data_source": "local", "dataset_name": "mine",
                                        "path": "no/such.npz"})  # fmt: skip
    failed = distlm(home, "submit", spec_file(tmp_path, missing, "bad.json"), "--yes", "--watch")
    assert failed.returncode == 1 and "failed" in failed.stdout

    long_spec = spec_file(tmp_path, small_split_job(300, 0.2), "long.json")
    long = distlm(home, "--json", "submit", long_spec, "--yes")
    job_id = json.loads(long.stdout)["id"]
    assert distlm(home, "cancel", str(job_id)).returncode == 0
    assert distlm(home, "watch", str(job_id)).returncode == 2

    rich = small_split_job(1, requirements={"gpu": 0, "cpu_cores": 64, "memory": 64},
                     max_runtime_s=30 * 24 * 3600)  # fmt: skip
    poor = distlm(home, "submit", spec_file(tmp_path, rich, "rich.json"), "--yes")
    assert poor.returncode == 3 and "short by" in poor.stderr

    listed = distlm(home, "--json", "jobs")
    assert listed.returncode == 0
    owner = {"Authorization": f"Bearer {gateway.owner_token}"}
    api = httpx.get(f"{gateway.base}/jobs", headers=owner).json()
    assert [j["id"] for j in json.loads(listed.stdout)] == [j["id"] for j in api["items"]]
    assert json.loads(distlm(home, "--json", "balance").stdout)["held"] == 0
    first = api["items"][-1]  # the job that ran to its end
    logs = distlm(home, "logs", str(first["id"]))
    assert logs.returncode == 0 and "placed on node" in logs.stdout


def test_watch_draws_a_progress_bar_that_advances_in_a_terminal(home: dict, tmp_path: Path) -> None:
    logged_in(home)
    submitted = distlm(
        home, "--json", "submit", spec_file(tmp_path, small_split_job(3, 0.1)), "--yes"
    )
    job_id = json.loads(submitted.stdout)["id"]
    parent, child = pty.openpty()
    process = subprocess.Popen([DISTLM, "watch", str(job_id)], env=home, stdin=child,
                               stdout=child, stderr=child, close_fds=True)  # fmt: skip
    os.close(child)
    screen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([parent], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(parent, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        if process.poll() is not None and not ready:
            break
    process.wait(timeout=30)
    os.close(parent)
    text = screen.decode(errors="replace")
    shown = [int(m) for m in re.findall(r"step (\d+)/\d+", text)]
    assert process.returncode == 0, text[-2000:]
    assert len(set(shown)) >= 3 and shown[-1] > shown[0], text[-2000:]  # it advanced
    assert shown == sorted(shown), shown  # and never went back
    assert "\x1b[" in text  # drawn for a terminal


class ScriptedJob:
    """A job whose event stream and status reason follow a script: each event comes with
    the reason the job reads from then on (what a refresh sees)."""

    id = 7
    status = "running"

    def __init__(self, script: list[tuple[str, dict, str]]) -> None:
        self.script, self.reason = script, ""
        self.data = {"cost_so_far": 0.5, "hold": 2.0}

    def refresh(self) -> ScriptedJob:
        return self

    def events(self):
        for kind, data, reason in self.script:
            self.reason = reason
            yield {"event": kind, "data": data}


def test_watch_never_goes_backwards_nor_formats_a_missing_total(monkeypatch) -> None:
    from rich.console import Console
    from rich.progress import Progress

    from distlm import progress

    shown: list[str] = []

    class RecordingProgress(Progress):  # the real bar, noting each text of its position
        def update(self, task_id, **fields) -> None:
            super().update(task_id, **fields)
            if "where" in fields:
                shown.append(fields["where"])

    monkeypatch.setattr(progress, "Progress", RecordingProgress)
    script = [
        ("metric", {"step": 3, "values": {"loss": 2.0}}, ""),  # before any total is known
        ("metric", {"step": 0, "values": {"samples": 40}}, ""),  # step 0 without a total
        ("metric", {"step": 0, "values": {"total_steps": 10}}, ""),
        ("metric", {"step": 5, "values": {"loss": 1.5}}, ""),
        ("status", {"status": "running", "reason": "step 4 of 10"}, "running: step 2 of 10"),
        ("metric", {"step": 4, "values": {"loss": 1.6}}, ""),  # late and out of order
        ("metric", {"step": 7, "values": {"loss": 1.2}}, ""),
        ("end", {}, "succeeded at step 7 of 10"),
    ]
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    progress.watch(ScriptedJob(script), console=console)
    assert shown[0] == "step 3" and shown[-1] == "step 7/10", shown
    assert all(re.fullmatch(r"step \d+(/10)?", text) for text in shown), shown
    steps = [int(re.match(r"step (\d+)", text)[1]) for text in shown]
    assert steps == sorted(steps), shown  # the lower steps (4, and 2 in a reason) never shown


def test_the_python_client_as_a_notebook_uses_it(gateway: Gateway, tmp_path: Path) -> None:
    from distlm.client import Client
    from distlm.errors import NotFoundError

    with Client(gateway.base) as client:
        client.login(OWNER, OWNER_PASSWORD)
        job = client.submit(small_split_job(2))
        job.wait(progress=True, timeout_s=300)
        assert job.status == "succeeded", job.reason
        final = [p for p in job.metrics() if "validation_accuracy" in p["values"]][-1]
        assert final["values"]["validation_accuracy"] > 0.5
        model = job.download_model(tmp_path / "model.tar.gz")
        assert model.stat().st_size > 0
        with pytest.raises(NotFoundError) as missing:
            client.job(999_999)
        assert missing.value.code == "not_found" and missing.value.status == 404


def test_submit_by_flags_json_anywhere_results_by_task_and_one_line_errors(
    home: dict, tmp_path: Path
) -> None:
    """Issue 23 (6): `submit` takes the common fields as flags (over a spec file), `--json`
    works after a command, `download --results` picks the format by the job's task and the
    file's name, an unreachable gateway is one line, and completion scripts print."""
    logged_in(home)
    # What the launcher's one-CPU node needs (the loader's share) comes from a file; the
    # model, the data and the length from flags.
    base = {key: value for key, value in small_split_job(1).items() if key not in (
        "model_config", "data_config", "name")}  # fmt: skip
    base["training_config"] = {k: v for k, v in base["training_config"].items() if k != "epochs"}
    flags = ["--model-type", "classifier", "--model", "mlp", "--dataset", "digits",
             "--steps", "4", "--name", "by flags"]  # fmt: skip
    trained = distlm(home, "submit", spec_file(tmp_path, base, "base.json"), *flags,
                     "--yes", "--watch")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"charged [0-9.e-]+ tokens \(refunded", trained.stdout), trained.stdout
    listed = json.loads(distlm(home, "jobs", "--json").stdout)
    source = next(job for job in listed if job["name"] == "by flags")
    assert source["spec"]["training_config"]["max_steps"] == 4
    assert source["spec"]["data_config"]["data_source"] == "builtin"

    side = {"training_config": {"loader": {"cpu_cores": 0.5, "memory": 0.5}},
            "requirements": {"gpu": 0, "cpu_cores": 0.5, "memory": 0.5}}  # fmt: skip
    model = {"type": "classifier", "model_name": f"job:{source['id']}"}
    data = {"data_source": "builtin", "dataset_name": "digits", "max_samples": 100}
    ids = {}
    for task in ("validate", "infer"):
        spec = {**side, "task": task, "model_config": model, "data_config": data}
        done = distlm(home, "--json", "submit", spec_file(tmp_path, spec, f"{task}.json"),
                      "--yes", "--watch")  # fmt: skip
        assert done.returncode == 0, done.stderr
        ids[task] = json.loads(done.stdout)["job"]["id"]
    scores = tmp_path / "scores"
    got = distlm(home, "download", str(ids["validate"]), "--results", "-o", str(scores))
    assert got.returncode == 0, got.stderr
    assert "accuracy" in json.loads(scores.read_text())  # JSON, chosen by the task
    table = tmp_path / "predictions.parquet"
    got = distlm(home, "download", str(ids["infer"]), "--results", "-o", str(table))
    assert got.returncode == 0 and table.read_bytes()[:4] == b"PAR1", got.stderr
    lines = tmp_path / "job-results.jsonl"
    got = distlm(home, "download", str(ids["infer"]), "--format", "jsonl", "-o", str(lines))
    assert got.returncode == 0 and json.loads(lines.read_text().splitlines()[0])

    away = distlm({**home, "DISTLM_URL": "http://127.0.0.1:9"}, "jobs")
    assert away.returncode == 1
    assert away.stderr.strip().splitlines() == [
        "error: cannot reach the gateway at http://127.0.0.1:9: [Errno 111] Connection refused"
    ]
    script = distlm(home, "completion", "bash")
    assert script.returncode == 0 and "_DISTLM_COMPLETE" in script.stdout

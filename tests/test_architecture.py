"""The layering ARCHITECTURE.md §3 promises, checked on the source: no import circle
anywhere in backend/, ray_module imports nothing of ours but itself and the protocol (a
worker machine needs only its dependencies), and the protocol imports nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import BACKEND

OUR_PACKAGES = {p.name for p in BACKEND.iterdir() if (p / "__init__.py").is_file()}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(BACKEND).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in BACKEND.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function, with the
    packages whose ``__init__`` that import runs."""
    found: set[str] = set()
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            if name.split(".")[0] not in OUR_PACKAGES:
                continue
            parts = name.split(".")
            for end in range(1, len(parts) + 1):  # a.b.c runs a/__init__ and a/b/__init__
                candidate = ".".join(parts[:end])
                if candidate in MODULES and candidate != this:
                    found.add(candidate)
    return found


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_circle_and_package_inits() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # importing ray_module.runner.client runs ray_module/runner/__init__ too
    assert "ray_module.runner" in GRAPH["agent.driver"]


def test_no_import_circle_in_backend() -> None:
    assert cycles(GRAPH) == []


def test_ray_module_imports_nothing_of_ours_but_itself_and_the_protocol() -> None:
    outside = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.split(".")[0] == "ray_module"
        for target in targets
        if target.split(".")[0] not in ("ray_module", "protocol")
    }
    assert outside == set()


def test_the_protocol_imports_nothing_of_ours() -> None:
    """Both sides take the protocol: it must not bring either side along."""
    outside = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.split(".")[0] == "protocol"
        for target in targets
        if target.split(".")[0] != "protocol"
    }
    assert outside == set()


def test_the_client_imports_nothing_of_the_gateway() -> None:
    """distlm (client and CLI) talks HTTP only: a user's machine needs none of the server."""
    outside = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.split(".")[0] == "distlm"
        for target in targets
        if target.split(".")[0] != "distlm"
    }
    assert outside == set()


def test_layers_point_one_way() -> None:
    """core imports nothing of ours; auth and ledger only core; nothing imports app."""
    allowed = {"core": {"core"}, "auth": {"auth", "core"}, "ledger": {"ledger", "core"}}
    wrong = set()
    for name, targets in GRAPH.items():
        top = name.split(".")[0]
        for target in targets:
            target_top = target.split(".")[0]
            if top in allowed and target_top not in allowed[top]:
                wrong.add((name, target))
            if target_top == "app" and top != "app":
                wrong.add((name, target))
    assert wrong == set()


def test_the_gateway_side_of_the_registry_needs_no_torch_or_ray() -> None:
    """job_spec, the scheduler and the dispatcher ask the registry in every request and
    round: it must not pull torch or Ray into the gateway's import."""
    import subprocess
    import sys

    code = (
        "import sys; import ray_module.strategies.registry, compute.jobs.spec; "
        "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(BACKEND), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"


GATEWAY_RUN = """
import sys
from fastapi.testclient import TestClient
from app.main import create_app
from core.settings import Settings

settings = Settings(_env_file=None, database_url=sys.argv[1], storage_path=sys.argv[2],
                    admin_password="admin-change-me", argon2_time_cost=1,
                    argon2_memory_kib=1024, dispatch_interval_s=0.1)
with TestClient(create_app(settings)) as client:
    token = client.post("/auth/token", data={"username": "admin",
                                             "password": "admin-change-me"}).json()
    headers = {"Authorization": "Bearer " + token["access_token"]}
    job = {"model_config": {"type": "char_rnn", "model_name": "rnn"},
           "data_config": {"data_source": "builtin", "dataset_name": "stdlib-text"},
           "training_config": {"steps": 5},
           "requirements": {"gpu": 0, "cpu_cores": 1, "memory": 1}}
    assert client.post("/jobs/submit", headers=headers, json=job).status_code == 201
    assert client.get("/health").json()["ray"] == "nodes"
print(sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "torch"))))
"""


def test_the_gateway_process_never_imports_ray(tmp_path: Path) -> None:
    """The gateway is a control plane: serving the API and dispatching (jobs run on the
    nodes' own Ray, the default) never loads Ray, or torch, into its process."""
    assert (
        last_line_of(tmp_path, GATEWAY_RUN, f"sqlite:///{tmp_path / 'g.db'}", str(tmp_path)) == "[]"
    )


def last_line_of(home: Path, script: str, *args: str) -> str:
    """What ``script`` prints last, run in a fresh interpreter (nothing imported before it)
    with only the code root on its path and ``home`` as its home."""
    import subprocess
    import sys

    answer = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={"PYTHONPATH": str(BACKEND), "PATH": "/usr/bin:/bin", "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    return answer.stdout.strip().splitlines()[-1]


RUNNER_START = """
import sys
import agent.driver, ray_module.runner.job_runner
from ray_module.strategies.registry import STRATEGIES
for name in STRATEGIES:
    __import__(f"ray_module.strategies.{name}.run")
print(sorted(m for m in ("torch", "transformers", "datasets") if m in sys.modules))
"""


def test_a_jobs_runner_starts_its_workers_before_it_imports_torch(tmp_path: Path) -> None:
    """A job's driver and runner import every mode's run (and its workers' actor classes)
    without torch or transformers: importing them costs about a second, which every job
    would wait for before its first worker even started."""
    assert last_line_of(tmp_path, RUNNER_START) == "[]"


CONTROL_PLANE = ("app", "compute", "ledger", "auth", "core", "monitoring")
# `make run`'s launcher lends its machine through an agent of its own, started as any
# node's is; it only prepares the agent's credential file and calls (no Ray).
LAUNCHER_AGENT = {
    ("app.local_agent", "agent"),
    ("app.local_agent", "agent.credentials"),
    ("app.local_agent", "agent.gateway_client"),
}


def test_the_control_plane_imports_nothing_of_the_node_side() -> None:
    """The control plane and the node side share only the protocol package (issue 20, item
    8): no gateway module imports ray_module, even through a package init, and only the
    launcher's local agent takes from the agent package."""
    found = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.split(".")[0] in CONTROL_PLANE
        for target in targets
        if target.split(".")[0] in ("agent", "ray_module")
    }
    assert found == LAUNCHER_AGENT
    # Nor do those agent modules reach ray_module, however indirectly.
    reached, todo = set(), [target for _, target in LAUNCHER_AGENT]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(GRAPH.get(name, ()))
    assert not {name for name in reached if name.startswith("ray_module")}


def test_money_does_not_depend_on_the_dispatcher() -> None:
    """Billing and the ledger price, hold and settle; how jobs are dispatched is none of their
    business: no module under compute.billing or ledger imports compute.dispatch, directly
    or through another module."""
    money = [
        name
        for name in GRAPH
        if name.split(".")[0] == "ledger" or name.startswith("compute.billing")
    ]
    assert "compute.billing.usage" in money and "ledger.settlement" in money
    found = set()
    for start in money:
        reached, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name not in reached:
                reached.add(name)
                todo.extend(GRAPH.get(name, ()))
        found |= {
            (start, name) for name in reached if name.split(".")[:2] == ["compute", "dispatch"]
        }
    assert found == set()

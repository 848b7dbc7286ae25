"""Every Ray start gets a port of its own for each component: two Rays on one machine never
collide with each other or with Ray's fixed defaults."""

from __future__ import annotations

import random
import socket

from ray_module.ports import RAY_DEFAULT_PORTS, WORKER_PORTS, allocate_ray_ports


def every_port(ports) -> list[int]:
    singles = [
        ports.gcs, ports.dashboard, ports.dashboard_agent_listen, ports.dashboard_agent_grpc,
        ports.client_server, ports.metrics_export, ports.runtime_env_agent,
        ports.object_manager, ports.node_manager,
    ]  # fmt: skip
    return singles + list(range(ports.min_worker, ports.max_worker + 1))


def test_ports_are_distinct_free_and_never_rays_defaults() -> None:
    first = allocate_ray_ports("127.0.0.1")
    ports = every_port(first)
    assert len(ports) == len(set(ports)) == 9 + WORKER_PORTS
    assert not set(ports) & RAY_DEFAULT_PORTS
    args = first.start_args(head=True)
    assert f"--port={first.gcs}" in args and f"--min-worker-port={first.min_worker}" in args
    # A worker node has no GCS, dashboard or client server of its own.
    assert not any(
        a.startswith(("--port=", "--dashboard-port")) for a in first.start_args(head=False)
    )


def test_a_taken_port_is_never_handed_out() -> None:
    rng = random.Random(7)
    taken = allocate_ray_ports("127.0.0.1", rng=random.Random(7))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken.gcs))
        holder.listen()
        again = allocate_ray_ports("127.0.0.1", rng=rng)  # the same first draw: skipped
        assert taken.gcs not in every_port(again)

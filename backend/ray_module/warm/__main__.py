"""``python -m ray_module.warm``: start a node's warm workers on its Ray and leave (the keeper
lives on in that Ray). What to start comes on stdin as JSON: ``ray_address``, ``ray_token``
(never in argv or the environment), ``node_id``, ``size`` and, for a trusted pool's member,
``node_address`` (this machine's address in the pool); with ``"wait": true``, wait instead
until the node's warm workers are all ready and idle (a benchmark's warm state)."""

from __future__ import annotations

import json
import logging
import sys

from ray_module.cluster import use_auth_token
from ray_module.contract import NAMESPACE
from ray_module.warm.launch import start_keeper, wait_until_warm
from ray_module.warm.pool import keeper_name


def main() -> None:
    import ray

    order = json.loads(sys.stdin.read())
    if order.get("ray_token"):
        use_auth_token(order["ray_token"])
    # This machine's address in that Ray: the head's own for a node's own Ray.
    host = order.get("node_address") or order["ray_address"].rsplit(":", 1)[0]
    ray.init(
        address=order["ray_address"],
        namespace=NAMESPACE,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _node_ip_address=host,
    )
    try:
        if order.get("wait"):
            wait_until_warm(ray.get_actor(keeper_name(order["node_id"]), namespace=NAMESPACE))
        else:
            start_keeper(int(order["size"]), int(order["node_id"]))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

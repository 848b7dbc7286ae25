"""How a dataset is divided: a held-out validation split, then one shard per client.

Pure numpy and fully determined by the seed, so every client host computes the same
partition on its own machine and only indices, never data, have to agree.
"""

from __future__ import annotations

import numpy as np

from ray_module.errors import DataError

# A Dirichlet draw can leave a client (nearly) empty; redraw until each has this many.
MIN_SHARD_SIZE = 2
MAX_DIRICHLET_DRAWS = 100


class PartitionError(DataError):
    """The data cannot be divided as asked."""


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of ``n`` examples; both non-empty."""
    if n < 2:
        raise PartitionError(f"need at least two examples to hold some out, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_validation = min(max(1, round(n * fraction)), n - 1)
    return order[n_validation:], order[:n_validation]


def iid_partition(indices: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then cut into ``clients`` shards whose sizes differ by at most one."""
    _check_clients(len(indices), clients)
    order = np.random.default_rng(seed + 1).permutation(len(indices))
    return [indices[part] for part in np.array_split(order, clients)]


def dirichlet_partition(
    indices: np.ndarray, labels: np.ndarray, clients: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): each class is divided among the clients in proportions
    drawn from Dirichlet(alpha). Small alpha gives each client a few dominant classes; large
    alpha approaches IID. ``labels`` are those of ``indices``, position by position.
    """
    _check_clients(len(indices), clients)
    if alpha <= 0:
        raise PartitionError(f"dirichlet_alpha must be positive, got {alpha}")
    if len(indices) < clients * MIN_SHARD_SIZE:
        raise PartitionError(
            f"{len(indices)} examples cannot give {clients} clients {MIN_SHARD_SIZE} each"
        )
    rng = np.random.default_rng(seed + 1)
    classes = np.unique(labels)
    for _ in range(MAX_DIRICHLET_DRAWS):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, part in enumerate(np.split(members, cuts)):
                shards[client].extend(part.tolist())
        if min(len(shard) for shard in shards) >= MIN_SHARD_SIZE:
            return [indices[np.sort(np.asarray(shard, dtype=np.int64))] for shard in shards]
    raise PartitionError(
        f"could not give every one of {clients} clients {MIN_SHARD_SIZE} examples with "
        f"dirichlet_alpha={alpha}; raise alpha or use fewer clients"
    )


def label_histogram(labels: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(labels, minlength=num_classes).astype(int).tolist()


def _check_clients(n: int, clients: int) -> None:
    if clients < 1:
        raise PartitionError(f"clients must be at least 1, got {clients}")
    if n < clients:
        raise PartitionError(f"{n} training examples cannot be shared by {clients} clients")

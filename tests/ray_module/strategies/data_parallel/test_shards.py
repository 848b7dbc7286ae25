"""Every data-parallel rank takes as many steps per epoch: their shards are equal, so no rank
waits alone in a collective at an epoch's end (or at a check the others never reach)."""

from __future__ import annotations

import math

import torch

from ray_module.strategies.data_parallel.rank import shard_of


def test_ranks_get_equal_shards_that_cover_all_but_fewer_blocks_than_ranks() -> None:
    blocks = torch.arange(17 * 4).reshape(17, 4)
    for world in (1, 2, 3, 4):
        shards = [shard_of(blocks, rank, world) for rank in range(world)]
        assert len({len(shard) for shard in shards}) == 1, world
        used = torch.cat(shards)
        assert len(used) == 17 - 17 % world  # at most world - 1 left out
        assert len(torch.unique(used[:, 0])) == len(used)  # no block twice
        steps = {math.ceil(len(shard) / 8) for shard in shards}
        assert len(steps) == 1  # batch 8: as many steps per epoch on every rank
    assert [len(shard_of(blocks[:1], rank, 2)) for rank in range(2)] == [1, 0]

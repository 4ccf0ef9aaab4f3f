import pytest
import torch
import torch.distributed as dist

from mugv_testing import run_distributed


def _all_reduce(rank, world_size, base):
    t = torch.tensor([float(rank + base)])
    dist.all_reduce(t)
    return t.item(), world_size


def _fails(rank, world_size):
    if rank == 1:
        raise ValueError("boom on rank 1")
    return rank


@pytest.mark.distributed
def test_all_reduce_over_gloo():
    assert run_distributed(_all_reduce, world_size=2, args=(10,)) == [(21.0, 2), (21.0, 2)]


@pytest.mark.distributed
def test_failure_is_reported():
    with pytest.raises(RuntimeError, match="boom on rank 1"):
        run_distributed(_fails, world_size=2)

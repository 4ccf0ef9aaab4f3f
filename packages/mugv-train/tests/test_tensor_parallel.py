"""TP = 2 over gloo computes the same outputs, gradients and losses as TP = 1."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_dit_config, tiny_inputs


def _train_steps(model, steps: int = 3) -> tuple[list[float], torch.Tensor]:
    from mugv_train.objectives import flow_matching_loss
    from mugv_train.parallel import finalize_grads

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, first_out = [], None
    for step in range(steps):
        inputs = tiny_inputs(model.dit_config, seed=step)
        out = model(**inputs)
        if first_out is None:
            first_out = out.detach()
        target = torch.randn(
            out.shape[0],
            out.shape[1] // 2,
            *out.shape[2:],
            generator=torch.Generator().manual_seed(100 + step),
        )
        loss = flow_matching_loss(out, target, torch.zeros_like(target), inputs["x_mask"])
        opt.zero_grad()
        loss.backward()
        finalize_grads(model, sequence_parallel=False)  # sums the q/k-norm grads over TP
        opt.step()
        losses.append(loss.item())
    return losses, first_out


def _run_tp(rank: int, world: int, state_path: str):
    import warnings

    warnings.filterwarnings("ignore")
    from mugv_train.config import ParallelConfig
    from mugv_train.parallel import (
        MegatronMUGDiT,
        full_state_dict,
        init_distributed,
        load_full_state_dict,
    )

    parallel = ParallelConfig(tensor_parallel=world)
    init_distributed(parallel)
    torch.manual_seed(123 + rank)  # different per rank: weights must come from the checkpoint
    model = MegatronMUGDiT(tiny_dit_config(), parallel)
    load_full_state_dict(model, torch.load(state_path))
    losses, out = _train_steps(model)
    final = full_state_dict(model)
    # numpy pickles by value: torch tensors would travel through shared memory of an exiting process
    return losses, out.numpy(), {k: v.numpy() for k, v in final.items()}


@pytest.mark.distributed
def test_tp2_equals_tp1(megatron_tp1, tmp_path):
    from mugv_testing import assert_close, run_distributed
    from mugv_train.parallel import MegatronMUGDiT, full_state_dict

    torch.manual_seed(0)
    ref = MegatronMUGDiT(tiny_dit_config())
    with torch.no_grad():  # away from the init, where some gradients are ~0
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = full_state_dict(ref)
    torch.save(state, tmp_path / "state.pt")
    ref_losses, ref_out = _train_steps(ref)
    ref_final = full_state_dict(ref)

    results = run_distributed(
        _run_tp, world_size=2, args=(str(tmp_path / "state.pt"),), timeout=240
    )
    for losses, out, final in results:
        assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
        assert_close(torch.from_numpy(out), ref_out, rtol=1e-5, atol=1e-5, name="TP2 output")
        assert final.keys() == ref_final.keys()  # every parameter, q/k norms included
        for k, v in final.items():
            assert_close(torch.from_numpy(v), ref_final[k], rtol=1e-4, atol=1e-5, name=k)
    assert ref_losses[0] != ref_losses[-1]  # the steps changed the model

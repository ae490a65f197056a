"""Data parallelism: DDP gradients equal single-process gradients; the ZeRO memory arithmetic."""
import pytest
import torch

from bmlib import distributed as D
from bmlib.models.gpt import GPTConfig

CFG = GPTConfig.preset("tiny", n_layer=2, attn_impl="math")


def _batch(B=4, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, CFG.vocab_size, (B, T), generator=g),
            torch.randint(0, CFG.vocab_size, (B, T), generator=g))


def test_ddp_gradients_equal_single_process():
    idx, tgt = _batch()
    ref = D.reference_gradients(CFG, idx, tgt, seed=0)
    ranks = D.ddp_gradients(CFG, idx, tgt, world_size=2, backend="gloo", seed=0)
    assert len(ranks) == 2 and set(ranks[0]) == set(ref)
    for g in ranks:
        assert D.max_abs_diff(g, ref) < 1e-6
    assert D.max_abs_diff(ranks[0], ranks[1]) == 0.0  # after the all-reduce every rank holds the same
    # and the reference is not trivially equal to half a batch's gradient
    half = D.reference_gradients(CFG, idx[:2], tgt[:2], seed=0)
    assert D.max_abs_diff(half, ref) > 1e-4


@pytest.mark.slow
def test_fsdp_gradients_equal_single_process_and_shard_params():
    idx, tgt = _batch()
    ref = D.reference_gradients(CFG, idx, tgt, seed=0)
    out = D.parallel_gradients(CFG, idx, tgt, ("ddp", "fsdp"), world_size=2, backend="gloo", seed=0)
    assert all(r["local_numel"] == r["full_numel"] for r in out["ddp"])  # DDP: full replicas
    assert D.max_abs_diff(out["ddp"][0]["grads"], out["fsdp"][1]["grads"]) < 1e-6
    ranks = out["fsdp"]
    for r in ranks:
        assert D.max_abs_diff(r["grads"], ref) < 1e-6
        assert r["full_numel"] == sum(v.numel() for v in ref.values())
    # each rank stores about half of the parameters (dim-0 shards, padded to equal size)
    assert sum(r["local_numel"] for r in ranks) == pytest.approx(ranks[0]["full_numel"], rel=0.01)


def test_dataparallel_in_a_process_group_does_not_communicate():
    idx, tgt = _batch()
    out = D.parallel_gradients(CFG, idx, tgt, ("dataparallel",), world_size=2, backend="gloo", seed=0)
    ranks = [r["grads"] for r in out["dataparallel"]]
    for r, g in enumerate(ranks):  # each rank holds only the gradient of its own half of the batch
        own = D.reference_gradients(CFG, idx[2 * r:2 * r + 2], tgt[2 * r:2 * r + 2], seed=0)
        assert D.max_abs_diff(g, own) < 1e-6
    assert D.max_abs_diff(ranks[0], ranks[1]) > 1e-4  # the replicas would drift apart
    assert D.max_abs_diff(ranks[0], D.reference_gradients(CFG, idx, tgt, seed=0)) > 1e-4


def test_distributed_bad_arguments():
    idx, tgt = _batch(B=3)
    with pytest.raises(ValueError, match="world_size"):
        D.ddp_gradients(CFG, idx, tgt, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        D.launch(print, world_size=0)
    with pytest.raises(ValueError, match="backend"):
        D.launch(print, world_size=2, backend="mpi")
    with pytest.raises(TypeError, match="cfg"):
        D.reference_gradients({"n_layer": 2}, idx, tgt)
    with pytest.raises(ValueError, match="targets"):
        D.reference_gradients(CFG, idx, tgt[:, :4])
    with pytest.raises(ValueError, match="strategies"):
        D.parallel_gradients(CFG, *_batch(), strategies=("zero3",))
    with pytest.raises(ValueError, match="start_method"):
        D.launch(print, world_size=1, start_method="thread")
    with pytest.raises(TypeError, match="args"):
        D.launch(print, world_size=1, args=[1])
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="nccl"):
            D.launch(print, world_size=2, backend="nccl")
    with pytest.raises(ValueError, match="keys"):
        D.max_abs_diff({"a": torch.zeros(1)}, {"b": torch.zeros(1)})


def test_memory_per_param_matches_zero_paper():
    # Rajbhandari et al. (2020), Figure 1: 7.5B parameters, N_d = 64, K = 12
    psi, nd = 7.5e9, 64
    expect_gb = {"ddp": 120.0, "zero1": 31.4, "zero2": 16.6, "zero3": 1.9}
    for s, gb in expect_gb.items():
        assert D.memory_per_param(s, nd).gb(psi) == pytest.approx(gb, abs=0.05)
    # hand-computed bytes per parameter for N_d = 4
    m = D.memory_per_param("zero1", 4)
    assert (m.weights, m.grads, m.optimizer, m.total) == (2, 2, 3, 7)
    assert D.memory_per_param("zero2", 4).total == 2 + 14 / 4
    for s in ("zero3", "fsdp", "tensor", "pipeline"):
        assert D.memory_per_param(s, 4).total == 4.0
    assert D.memory_per_param("ddp", 1).total == 16
    # fp32 Adam without mixed precision: 4 + 4 + 8 = 16 bytes too
    assert D.memory_per_param("ddp", 8, weight_bytes=4, grad_bytes=4, optimizer_bytes=8).total == 16
    # one device: every strategy is plain data parallel
    assert {D.memory_per_param(s, 1).total for s in D.STRATEGIES} == {16.0}


@pytest.mark.parametrize("kw, arg", [
    (dict(strategy="zero4"), "strategy"),
    (dict(world_size=0), "world_size"),
    (dict(world_size=2.0), "world_size"),
    (dict(weight_bytes=-1), "weight_bytes"),
    (dict(optimizer_bytes="12"), "optimizer_bytes"),
])
def test_memory_per_param_bad_args(kw, arg):
    args = dict(strategy="zero1", world_size=2) | kw
    with pytest.raises(ValueError, match=arg):
        D.memory_per_param(**args)


def test_gb_bad_args():
    with pytest.raises(ValueError, match="n_params"):
        D.memory_per_param("ddp").gb(0)

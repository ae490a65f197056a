"""SASRec (causality, shapes, bad inputs), matrix factorisation and the popularity baseline."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import metrics
from bmlib.models.mf import MF, MFConfig
from bmlib.models.sasrec import SASRec, SASRecConfig, popularity_scores

CFG = SASRecConfig(n_items=30, max_len=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@settings(max_examples=15, deadline=None)
@given(t=st.integers(0, 10), seed=st.integers(0, 1000))
def test_sasrec_is_causal(t, seed):
    torch.manual_seed(0)
    m = SASRec(CFG).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 31, (2, 12), generator=g)
    x[1, :3] = 0  # left padding
    x2 = x.clone()
    x2[:, t + 1:] = torch.randint(1, 31, (2, 11 - t), generator=g)  # change every item after t
    h1, h2 = m.hidden(x), m.hidden(x2)
    torch.testing.assert_close(h1[:, :t + 1], h2[:, :t + 1], atol=1e-6, rtol=0)
    assert torch.isfinite(h1).all()
    if t < 11:
        assert not torch.allclose(h1[:, t + 1:], h2[:, t + 1:])


def test_sasrec_ignores_padding_and_impls_agree():
    torch.manual_seed(0)
    m = SASRec(CFG).eval()
    seq = torch.tensor([[5, 7, 9, 11]])
    a = m.hidden(torch.cat([torch.zeros(1, 8, dtype=torch.long), seq], 1))[:, -1]
    b = m.hidden(torch.cat([torch.zeros(1, 2, dtype=torch.long), seq], 1))[:, -1]
    # positions differ (absolute position embeddings count from the left), so compare the
    # padded vs a different-pad version only through the math/sdpa agreement and finiteness
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    x = torch.randint(0, 31, (3, 12))
    x[:, -1] = 4
    torch.testing.assert_close(m.hidden(x, impl="sdpa"), m.hidden(x, impl="math"), atol=1e-5, rtol=1e-5)
    # the embedding of a padding position is exactly zero before the blocks
    assert torch.all(m.wte.weight[0] == 0)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_sasrec_forward_and_score(loss):
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(**{**CFG.to_dict(), "loss": loss}))
    x = torch.randint(1, 31, (4, 12))
    y = torch.randint(0, 31, (4, 12))
    logits, l = m(x, y)
    assert logits.shape == ((y != 0).sum(), 31) and l.ndim == 0 and torch.isfinite(l)
    torch.testing.assert_close(logits, m(x)[0][y != 0])
    cand = torch.randint(1, 31, (4, 7))
    s = m.score(x, cand)
    assert s.shape == (4, 7)
    m.eval()
    torch.testing.assert_close(s, m(x)[0][:, -1].gather(1, cand), atol=1e-5, rtol=1e-5)


def test_sasrec_learns_a_deterministic_successor():
    # item i is always followed by i + 1: after training, the top-scored next item is right
    torch.manual_seed(0)
    cfg = SASRecConfig(n_items=20, max_len=8, n_layer=1, n_head=1, n_embd=16, dropout=0.0)
    m = SASRec(cfg)
    starts = torch.randint(1, 13, (64, 1))
    seq = starts + torch.arange(9)  # (64, 9), items up to 20
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(60):
        loss = m(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    pred = m(x)[0][:, -1, 1:].argmax(-1) + 1  # without y: (B, T, n_items + 1)
    assert (pred == y[:, -1]).float().mean() > 0.95


def test_sasrec_bad_inputs():
    m = SASRec(CFG)
    with pytest.raises(ValueError, match="max_len"):
        m(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="n_items"):
        m(torch.full((1, 4), 31))
    with pytest.raises(TypeError, match="integer tensor"):
        m(torch.ones(1, 4))
    with pytest.raises(ValueError, match="y must have the shape"):
        m(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="loss"):
        SASRecConfig(loss="mse")
    with pytest.raises(ValueError, match="n_embd"):
        SASRecConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="one row per sequence"):
        m.score(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 5, dtype=torch.long))


@pytest.mark.parametrize("loss", ["bpr", "bce"])
def test_mf_scores_and_loss(loss):
    torch.manual_seed(0)
    m = MF(MFConfig(n_users=5, n_items=9, dim=4, loss=loss, n_negatives=3))
    u = torch.tensor([0, 1, 4])
    i = torch.tensor([1, 9, 3])
    with torch.no_grad():  # weights with scores worked out by hand
        m.user.weight.copy_(torch.arange(20.0).view(5, 4) / 10)  # user u: (4u .. 4u+3) / 10
        m.item.weight.copy_(torch.arange(10.0)[:, None].expand(10, 4) / 10)  # item j: j/10 everywhere
        m.item_bias.weight.copy_(torch.arange(10.0)[:, None] / 100)  # bias j/100
    pos, l = m(u, i)
    # s(u, j) = (16u + 6)/10 * j/10 + j/100: (0, 1) -> 0.07, (1, 9) -> 2.07, (4, 3) -> 2.13
    torch.testing.assert_close(pos, torch.tensor([0.07, 2.07, 2.13]))
    assert l.ndim == 0 and l > 0
    cand = torch.tensor([[1, 2], [9, 3], [3, 3]])
    s = m.score(u, cand)
    torch.testing.assert_close(s[:, 0], m.score(u, cand[:, :1])[:, 0])
    full = m(u)[0]
    assert full.shape == (3, 10)
    torch.testing.assert_close(s, full.gather(1, cand))


def test_mf_bpr_learns_preferences():
    # user 0 likes items 1-3, user 1 likes 4-6
    torch.manual_seed(0)
    m = MF(MFConfig(n_users=2, n_items=6, dim=4))
    u = torch.tensor([0, 0, 0, 1, 1, 1] * 20)
    i = torch.tensor([1, 2, 3, 4, 5, 6] * 20)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(150):
        loss = m(u, i)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = m(torch.tensor([0, 1]))[0][:, 1:]
    assert set(s[0].topk(3).indices.tolist()) == {0, 1, 2}
    assert set(s[1].topk(3).indices.tolist()) == {3, 4, 5}


def test_mf_bad_inputs():
    m = MF(MFConfig(n_users=3, n_items=5, dim=2))
    with pytest.raises(ValueError, match="users"):
        m(torch.tensor([3]), torch.tensor([1]))
    with pytest.raises(ValueError, match="items"):
        m(torch.tensor([0]), torch.tensor([6]))
    with pytest.raises(ValueError, match="shape of users"):
        m(torch.tensor([0, 1]), torch.tensor([1]))
    with pytest.raises(TypeError, match="integer"):
        m(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="loss"):
        MFConfig(loss="mse")
    with pytest.raises(ValueError, match="candidates"):
        m.score(torch.tensor([0]), torch.tensor([1, 2]))


def test_popularity_on_a_hand_example():
    # item counts: item 1 seen 3x, item 2 once, item 3 twice, item 4 never
    counts = np.bincount([1, 1, 1, 2, 3, 3], minlength=5)
    cand = np.array([[2, 1, 3, 4],   # target 2 (col 0): items 1 and 3 beat it -> rank 3
                     [1, 2, 3, 4]])  # target 1: the most popular -> rank 1
    s = popularity_scores(counts, cand)
    np.testing.assert_array_equal(s, [[1, 3, 2, 0], [3, 1, 2, 0]])
    np.testing.assert_array_equal(metrics.rank_of_target(s, [0, 0]), [3, 1])
    assert metrics.hit_rate_at_k(s, [0, 0], k=2) == 0.5
    assert metrics.ndcg_at_k(s, [0, 0], k=10) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="candidates"):
        popularity_scores(counts, np.array([[5]]))
    with pytest.raises(ValueError, match="counts"):
        popularity_scores(counts[None], cand)

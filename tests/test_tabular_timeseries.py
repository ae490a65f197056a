"""The tabular (FT-Transformer style) and time-series transformers: shapes, losses, causality,
attention-path parity, learning a known signal through bmlib.train, and bad inputs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib.data.arrays import ArrayData
from bmlib.models.tabular import TabularConfig, TabularTransformer
from bmlib.models.timeseries import TimeSeriesConfig, TimeSeriesTransformer
from bmlib.train import TrainConfig, train


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster than two (and far faster on a shared,
    loaded machine, where spinning threads wait for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- tabular
@settings(max_examples=8, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(2, 4))
def test_tabular_shapes_and_loss(B, n_features, n_classes):
    torch.manual_seed(0)
    m = TabularTransformer(TabularConfig(n_features=n_features, n_outputs=n_classes, d_token=16,
                                         n_head=2, n_layer=1)).eval()
    x = torch.randn(B, n_features)
    y = torch.randint(0, n_classes, (B,))
    logits, loss = m(x, y)
    assert logits.shape == (B, n_classes)
    z = logits.double()  # mean NLL by hand in float64, not the model's own F.cross_entropy call
    nll = (torch.logsumexp(z, -1) - z.gather(-1, y[:, None]).squeeze(-1)).mean()
    assert abs(loss.item() - nll.item()) < 1e-5
    assert m(x)[1] is None
    p = m.predict_proba(x)
    torch.testing.assert_close(p.sum(-1), torch.ones(B))


def test_tabular_regression_and_sdpa_parity():
    torch.manual_seed(0)
    cfg = TabularConfig(n_features=5, n_outputs=1, task="regression", d_token=16, n_head=4)
    m = TabularTransformer(cfg).eval()
    x, y = torch.randn(7, 5), torch.randn(7)
    out, loss = m(x, y)
    assert out.shape == (7,)
    assert abs(loss.item() - sum((o - t) ** 2 for o, t in zip(out.tolist(), y.tolist())) / 7) < 1e-5
    m2 = TabularTransformer(TabularConfig(**{**cfg.to_dict(), "attn_impl": "sdpa"})).eval()
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x)[0], out, atol=1e-5, rtol=1e-5)


def test_tabular_feature_tokenizer_is_per_feature_affine():
    torch.manual_seed(0)
    m = TabularTransformer(TabularConfig(n_features=3, d_token=8, n_head=2))
    x = torch.randn(4, 3)
    tok = m.tokenizer(x)
    torch.testing.assert_close(tok[:, 1], x[:, 1:2] * m.tokenizer.weight[1] + m.tokenizer.bias[1])


def test_tabular_learns_a_feature_interaction():
    """y = [x0 * x1 > 0]: invisible to a linear model, learnable by attention over features."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 3)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    torch.manual_seed(0)
    m = TabularTransformer(TabularConfig(n_features=3, d_token=16, n_layer=1, n_head=2, dropout=0.0,
                                         attn_dropout=0.0))
    res = train(m, ArrayData(x[:1000], y[:1000], x[1000:], y[1000:]),
                TrainConfig(max_steps=120, batch_size=64, lr=1e-2, weight_decay=0.0, progress=False,
                            eval_iters=1, eval_batch_size=200))
    acc = (m.predict_proba(torch.from_numpy(x[1000:])).argmax(-1).numpy() == y[1000:]).mean()
    assert acc > 0.9, acc  # a linear model gets ~0.5 here
    assert res.final_val_loss < 0.3


def test_tabular_bad_inputs():
    m = TabularTransformer(TabularConfig(n_features=3))
    with pytest.raises(ValueError, match=r"x must have shape \(B, n_features=3\)"):
        m(torch.randn(2, 4))
    with pytest.raises(ValueError, match="x must be floating point"):
        m(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="y labels must lie"):
        m(torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="y must be integer class labels"):
        m(torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="d_token"):
        TabularConfig(d_token=30, n_head=4)
    with pytest.raises(ValueError, match="n_outputs"):
        TabularConfig(n_outputs=1)
    with pytest.raises(ValueError, match="task"):
        TabularConfig(task="ranking")
    with pytest.raises(ValueError, match="preset"):
        TabularConfig.preset("huge")
    with pytest.raises(TypeError, match="cfg"):
        TabularTransformer({"n_features": 3})
    assert TabularConfig.preset("small", n_features=7).n_features == 7


# ----------------------------------------------------------------------------- time series
def test_timeseries_is_causal_and_loss_all_matches_prefixes():
    torch.manual_seed(0)
    cfg = TimeSeriesConfig(block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0, loss_on="all")
    m = TimeSeriesTransformer(cfg).eval()
    x, y = torch.randn(3, 10), torch.randn(3)
    pred, loss = m(x, y)
    # the forecast after step t depends only on steps <= t: recompute it from each prefix
    prefix_preds = torch.stack([m(x[:, :t + 1])[0] for t in range(10)], dim=1)  # (B, T)
    torch.testing.assert_close(prefix_preds[:, -1], pred)
    target = torch.cat([x[:, 1:], y[:, None]], dim=1)
    torch.testing.assert_close(loss, F.mse_loss(prefix_preds, target), atol=1e-6, rtol=1e-5)
    # changing the future does not change the past forecasts
    x2 = x.clone()
    x2[:, 6:] += 5.0
    torch.testing.assert_close(m(x2[:, :6])[0], prefix_preds[:, 5])
    last = TimeSeriesTransformer(TimeSeriesConfig(**{**cfg.to_dict(), "loss_on": "last"})).eval()
    last.load_state_dict(m.state_dict())
    assert abs(last(x, y)[1].item() - sum((p - t) ** 2 for p, t in zip(pred.tolist(), y.tolist())) / 3) < 1e-5


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 5), st.integers(1, 16), st.integers(1, 3))
def test_timeseries_shapes_and_sdpa_parity(B, T, n_inputs):
    torch.manual_seed(0)
    cfg = TimeSeriesConfig(block_size=16, n_inputs=n_inputs, n_layer=1, n_head=2, n_embd=8)
    m = TimeSeriesTransformer(cfg).eval()
    x = torch.randn(B, T, n_inputs)
    pred = m(x)[0]
    assert pred.shape == (B,)
    m2 = TimeSeriesTransformer(TimeSeriesConfig(**{**cfg.to_dict(), "attn_impl": "sdpa"})).eval()
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x)[0], pred, atol=1e-5, rtol=1e-5)


def test_timeseries_learns_ar1():
    """An AR(1) series x_t = 0.8 x_{t-1} + e_t: the best forecast has MSE = var(e) = 1, while
    predicting 0 has MSE = 1 / (1 - 0.64) ~ 2.8."""
    rng = np.random.default_rng(0)
    e = rng.normal(size=5000)
    s = np.zeros(5000)
    for t in range(1, 5000):
        s[t] = 0.8 * s[t - 1] + e[t]
    L = 8
    X = np.lib.stride_tricks.sliding_window_view(s, L)[:-1].astype(np.float32)
    y = s[L:].astype(np.float32)
    torch.manual_seed(0)
    m = TimeSeriesTransformer(TimeSeriesConfig(block_size=L, n_layer=1, n_head=2, n_embd=16,
                                               dropout=0.0, loss_on="all"))
    train(m, ArrayData(X[:4000], y[:4000], X[4000:], y[4000:]),
          TrainConfig(max_steps=200, batch_size=64, lr=3e-3, weight_decay=0.0, progress=False,
                      eval_iters=1))
    mse = float(((m.predict(torch.from_numpy(X[4000:])).numpy() - y[4000:]) ** 2).mean())
    zero = float((y[4000:] ** 2).mean())
    assert mse < 1.2 and mse < 0.5 * zero, (mse, zero)


def test_timeseries_bad_inputs():
    m = TimeSeriesTransformer(TimeSeriesConfig(block_size=8))
    with pytest.raises(ValueError, match="block_size=8"):
        m(torch.randn(2, 9))
    with pytest.raises(ValueError, match=r"x must be a float tensor of shape \(B, T, n_inputs=1\)"):
        m(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"y must be a tensor of shape \(2,\)"):
        m(torch.randn(2, 4), torch.randn(2, 1))
    with pytest.raises(ValueError, match="loss_on"):
        TimeSeriesConfig(loss_on="first")
    with pytest.raises(ValueError, match="n_embd"):
        TimeSeriesConfig(n_embd=30, n_head=4)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m([[0.0, 1.0]])


def test_models_are_deterministic_given_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = TimeSeriesTransformer(TimeSeriesConfig.preset("tiny")).eval()
        t = TabularTransformer(TabularConfig.preset("tiny", n_features=4)).eval()
        g = torch.Generator().manual_seed(0)
        outs.append((m(torch.randn(2, 16, generator=g))[0], t(torch.randn(2, 4, generator=g))[0]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)

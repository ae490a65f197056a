"""ViT and the small CNN: shapes, bad inputs, Hugging Face parity, attention maps and rollout."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib.models.cnn import CNNConfig, SmallCNN
from bmlib.models.vit import ViT, ViTConfig, attention_rollout

TINY = dict(n_layer=2, n_head=2, n_embd=16, mlp_ratio=2)


@settings(max_examples=25, deadline=None)
@given(image_size=st.integers(2, 16), patch_size=st.integers(1, 8), in_chans=st.integers(1, 3),
       batch=st.integers(1, 3))
def test_vit_shapes_or_patch_error(image_size, patch_size, in_chans, batch):
    if image_size % patch_size:
        with pytest.raises(ValueError, match="patch_size"):
            ViTConfig(image_size=image_size, patch_size=patch_size, in_chans=in_chans, **TINY)
        return
    cfg = ViTConfig(image_size=image_size, patch_size=patch_size, in_chans=in_chans, n_classes=5, **TINY)
    torch.manual_seed(0)
    m = ViT(cfg).eval()
    x = torch.rand(batch, in_chans, image_size, image_size)
    y = torch.randint(0, 5, (batch,))
    logits, loss = m(x, y)
    assert logits.shape == (batch, 5)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # tokens = [CLS] + the patches torch's own unfold cuts (not the config's formula again)
    n_tok = 1 + x.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size).shape[2:4].numel()
    maps = m.attention_maps(x)
    assert len(maps) == cfg.n_layer and maps[0].shape == (batch, cfg.n_head, n_tok, n_tok)


def test_vit_bad_inputs():
    m = ViT(ViTConfig(**TINY))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        m(torch.rand(2, 1, 8, 6))
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.rand(1, 8, 8))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m([[0.0]])
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="y must be a tensor of class ids"):
        m(torch.rand(2, 1, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="impl"):
        m(torch.rand(2, 1, 8, 8), impl="flash")
    with pytest.raises(ValueError, match="n_embd"):
        ViTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="attn_impl"):
        ViTConfig(attn_impl="nope")
    with pytest.raises(ValueError, match="unknown preset"):
        ViTConfig.preset("huge")
    with pytest.raises(TypeError, match="ViTConfig"):
        ViT({"n_layer": 2})


def test_vit_matches_huggingface():
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    cfg = ViTConfig.preset("digits-tiny")
    torch.manual_seed(0)
    hf = ViTForImageClassification(HFConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.mlp_ratio * cfg.n_embd, num_labels=10,
        layer_norm_eps=cfg.layer_norm_eps, attn_implementation="eager")).eval()
    m = ViT(cfg).eval()
    m.load_state_dict(hf.state_dict())  # strict: the parameter names match one to one
    x = torch.rand(4, 1, 8, 8)
    out = hf(pixel_values=x, output_attentions=True)
    torch.testing.assert_close(m(x)[0], out.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(m.attention_maps(x), out.attentions):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_vit_math_and_sdpa_agree():
    torch.manual_seed(0)
    m = ViT(ViTConfig.preset("digits")).eval()
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(m(x, impl="sdpa")[0], m(x, impl="math")[0], atol=1e-5, rtol=1e-5)


def test_attention_maps_are_distributions_and_rollout():
    torch.manual_seed(0)
    m = ViT(ViTConfig.preset("digits"))
    m.train()
    x = torch.rand(3, 1, 8, 8)
    maps = m.attention_maps(x)
    assert m.training  # restored
    for a in maps:
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
    r = attention_rollout(maps)
    assert r.shape == (3, 17, 17)
    torch.testing.assert_close(r.sum(-1), torch.ones(3, 17), atol=1e-5, rtol=0)
    # one layer without the residual term is just the head-averaged map
    torch.testing.assert_close(attention_rollout(maps[:1], residual=False), maps[0].mean(1))
    # rollout of identity attention is the identity
    eye = torch.eye(4).expand(2, 1, 4, 4)
    torch.testing.assert_close(attention_rollout([eye, eye]), torch.eye(4).expand(2, 4, 4))
    with pytest.raises(ValueError, match="maps"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"maps\[1\]"):
        attention_rollout([maps[0], maps[1][:, :, :5]])


def test_vit_learns_a_separable_toy_task():
    # two classes: bright top half vs bright bottom half; a few steps must fit it
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8) * 0.1
    y = torch.randint(0, 2, (64,))
    x[y == 0, :, :4] += 1.0
    x[y == 1, :, 4:] += 1.0
    m = ViT(ViTConfig(n_classes=2, **TINY))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(40):
        loss = m(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (m(x)[0].argmax(1) == y).float().mean() == 1.0


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 4), image_size=st.sampled_from([4, 8, 16]), in_chans=st.integers(1, 3))
def test_cnn_shapes(batch, image_size, in_chans):
    cfg = CNNConfig(image_size=image_size, in_chans=in_chans, channels=(4, 8), n_classes=3)
    m = SmallCNN(cfg).eval()
    logits, loss = m(torch.rand(batch, in_chans, image_size, image_size), torch.zeros(batch, dtype=torch.long))
    assert logits.shape == (batch, 3) and torch.isfinite(loss)


def test_cnn_bad_inputs():
    with pytest.raises(ValueError, match="image_size"):
        CNNConfig(image_size=6, channels=(4, 8))
    with pytest.raises(ValueError, match="channels"):
        CNNConfig(channels=())
    with pytest.raises(ValueError, match="unknown preset"):
        CNNConfig.preset("resnet")
    m = SmallCNN(CNNConfig.preset("digits-tiny"))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        m(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="y must be"):
        m(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, dtype=torch.long))
    assert 10_000 < m.num_params() < 20_000

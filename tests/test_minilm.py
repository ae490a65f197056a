import shutil

import pytest
import torch

from bmlib.models import minilm


def test_packaged_model_checksum_and_embeddings():
    assert minilm.verify() == minilm.model_dir()
    tok, model = minilm.load_minilm()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    e = minilm.embed(["A cat sat on the mat.", "A kitten sits on a rug.", "Stock prices fell."], tok, model)
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    sims = e @ e.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # paraphrases are closer than unrelated text


def test_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    tok, model = minilm.load_minilm()
    texts = ["hello world", "attention is all you need"]
    ref = torch.tensor(st.SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(texts))
    assert torch.allclose(minilm.embed(texts, tok, model), ref, atol=1e-5)


def test_tampered_weights_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(minilm.model_dir(), folder)
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match="sha256"):
        minilm.load_minilm(folder)
    with pytest.raises(ValueError, match="path"):
        minilm.verify(tmp_path)


def test_mean_pool_and_embed_errors():
    h = torch.randn(2, 4, 8)
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = minilm.mean_pool(h, m)
    assert torch.allclose(pooled[0], h[0, :2].mean(0)) and torch.allclose(pooled[1], h[1].mean(0))
    with pytest.raises(ValueError, match="attention_mask"):
        minilm.mean_pool(h, m[:, :3])
    with pytest.raises(ValueError, match="texts"):
        minilm.embed("not a list", None, None)


@pytest.mark.parametrize("n_top", [1, 2, 6])
def test_top_layers_on_cached_states_equal_the_full_encoder(n_top):
    """The fast path (cached states of block 6 - k, then the copied top k blocks) computes the same
    last states as running the whole encoder (the reference path), at every unpadded position."""
    tok, model = minilm.load_minilm()
    texts = ["a short one", "a somewhat longer review of a product that I liked a lot, really", "meh"]
    S, M, P = minilm.encode_states(texts, tok, model, 6 - n_top, max_length=24)
    last, _, _ = minilm.encode_states(texts, tok, model, 6, max_length=24)
    assert S.shape == (3, 24, 384) and M.shape == (3, 24) and int(M[2].sum()) < int(M[1].sum())
    top = minilm.TopLayersClassifier(model, n_top).eval()
    with torch.no_grad():
        h = top.states(minilm.pack_states(S, M))
    assert float(((h - last).abs() * M[..., None]).max()) < 1e-4
    torch.testing.assert_close(P, minilm.embed(texts, tok, model, max_length=24))
    # training the copy leaves the frozen encoder untouched
    w = model.encoder.layer[-1].output.dense.weight.detach().clone()
    logits, loss = top(minilm.pack_states(S, M), torch.tensor([1, 0, 1]))
    loss.backward()
    assert top.blocks[-1].output.dense.weight.grad is not None
    assert model.encoder.layer[-1].output.dense.weight.grad is None
    torch.testing.assert_close(model.encoder.layer[-1].output.dense.weight, w)
    assert logits.shape == (3, 2) and top.predict(minilm.pack_states(S, M)).sum(1).allclose(torch.ones(3))


def test_top_layers_bad_inputs():
    tok, model = minilm.load_minilm()
    with pytest.raises(ValueError, match="n_top"):
        minilm.TopLayersClassifier(model, 7)
    with pytest.raises(ValueError, match="layer"):
        minilm.encode_states(["x"], tok, model, 9)
    with pytest.raises(ValueError, match="mask"):
        minilm.pack_states(torch.zeros(2, 4, 384), torch.ones(2, 5))
    with pytest.raises(ValueError, match="packed states"):
        minilm.TopLayersClassifier(model, 1)(torch.zeros(2, 4, 384))

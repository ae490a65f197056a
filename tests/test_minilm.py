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

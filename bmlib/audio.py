"""Audio features, step by step: from a waveform to MFCCs, and dynamic time warping between them.

The pipeline every classic speech front end shares (Davis and Mermelstein, 1980):

1. :func:`frame` cuts the waveform into overlapping frames (``frame_length`` samples every
   ``hop_length``), optionally padded by reflection so that frame ``t`` is centred on sample
   ``t * hop_length`` (``center=True``, as :func:`torch.stft` does);
2. :func:`hann_window` tapers each frame (the periodic Hann window, :func:`torch.hann_window`'s default);
3. :func:`stft` takes the real FFT of each windowed frame: ``(n_frames, n_fft // 2 + 1)`` complex bins;
4. :func:`power_spectrum` ``|X|^2``;
5. :func:`mel_filterbank` pools the bins with triangles equally spaced on the mel scale
   (:func:`hz_to_mel`, the HTK formula ``2595 log10(1 + f / 700)``), which is roughly linear below
   1 kHz and logarithmic above, like the ear's frequency resolution;
6. a log compresses the dynamic range (loudness is perceived roughly logarithmically);
7. :func:`dct_matrix`, the orthonormal DCT-II, decorrelates the log-mel energies; the first
   ``n_mfcc`` coefficients are the MFCCs (:func:`mfcc` runs all seven steps).

:func:`dtw_distance` is dynamic time warping (Sakoe and Chiba, 1978) between two feature sequences;
:func:`dtw_matrix` computes it for every query/reference pair at once (vectorised over pairs), the
engine of a 1-nearest-neighbour classifier. :func:`synthesize` speaks text with eSpeak NG (from
the ``espeakng-loader`` wheel, driven through ``ctypes``), so the chapter has real audio to featurise.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

__all__ = ["frame", "hann_window", "stft", "power_spectrum", "hz_to_mel", "mel_to_hz", "mel_filterbank",
           "dct_matrix", "log_mel", "mfcc", "dtw_distance", "dtw_matrix", "synthesize"]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_pos_int(name: str, v) -> None:
    if not (_is_int(v) and v >= 1):
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def _signal(x, name: str = "x") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a 1-D numpy array of samples, got {type(x).__name__}")
    if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a non-empty 1-D numeric array (samples,), got shape {x.shape} {x.dtype}")
    return x.astype(np.float64)


def frame(x, frame_length: int, hop_length: int, center: bool = False) -> np.ndarray:
    """``(n_frames, frame_length)`` overlapping frames of ``x``; with ``center=True`` the signal is
    first padded by ``frame_length // 2`` samples of reflection on each side."""
    x = _signal(x)
    _check_pos_int("frame_length", frame_length)
    _check_pos_int("hop_length", hop_length)
    if center:
        if x.size <= frame_length // 2:
            raise ValueError(f"x has {x.size} samples; center=True needs more than frame_length // 2 = "
                             f"{frame_length // 2}")
        x = np.pad(x, frame_length // 2, mode="reflect")
    if x.size < frame_length:
        raise ValueError(f"x has {x.size} samples, fewer than frame_length={frame_length}")
    n = 1 + (x.size - frame_length) // hop_length
    idx = np.arange(frame_length)[None, :] + hop_length * np.arange(n)[:, None]  # (n_frames, frame_length)
    return x[idx]


def hann_window(n: int, periodic: bool = True) -> np.ndarray:
    """The Hann window ``0.5 - 0.5 cos(2 pi k / N)``, ``N = n`` (periodic) or ``n - 1`` (symmetric)."""
    _check_pos_int("n", n)
    if n == 1:
        return np.ones(1)
    N = n if periodic else n - 1
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / N)


def stft(x, n_fft: int = 256, hop_length: int = 80, center: bool = True) -> np.ndarray:
    """Short-time Fourier transform: ``(n_frames, n_fft // 2 + 1)`` complex, Hann-windowed frames
    of ``n_fft`` samples (``torch.stft(..., window=torch.hann_window(n_fft), center=center,
    pad_mode="reflect", return_complex=True).T``)."""
    frames = frame(x, n_fft, hop_length, center=center)  # (n_frames, n_fft)
    return np.fft.rfft(frames * hann_window(n_fft), axis=1)  # (n_frames, n_fft // 2 + 1)


def power_spectrum(X) -> np.ndarray:
    """``|X|^2`` of a complex spectrum."""
    X = np.asarray(X)
    if not np.iscomplexobj(X):
        raise TypeError(f"X must be a complex spectrum (from stft), got dtype {X.dtype}")
    return X.real ** 2 + X.imag ** 2


def hz_to_mel(f):
    """HTK mel scale: ``2595 log10(1 + f / 700)`` (1000 Hz -> 1000 mel)."""
    f = np.asarray(f, dtype=np.float64)
    if np.any(f < 0):
        raise ValueError("f must be >= 0 Hz")
    return 2595.0 * np.log10(1.0 + f / 700.0)


def mel_to_hz(m):
    """Inverse of :func:`hz_to_mel`: ``700 (10^(m / 2595) - 1)``."""
    m = np.asarray(m, dtype=np.float64)
    if np.any(m < 0):
        raise ValueError("m must be >= 0 mel")
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: float, fmin: float = 0.0, fmax: float | None = None,
                   ) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` triangular filters. Filter ``m`` rises linearly from centre
    ``m - 1`` to 1 at centre ``m`` and falls to 0 at centre ``m + 1``; the ``n_mels + 2`` edges are
    equally spaced in mel between ``fmin`` and ``fmax`` (default: Nyquist). Between the first and
    last centre, neighbouring triangles sum to exactly 1 at every frequency."""
    _check_pos_int("n_mels", n_mels)
    _check_pos_int("n_fft", n_fft)
    if isinstance(sample_rate, bool) or not (isinstance(sample_rate, (int, float)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive number, got {sample_rate!r}")
    fmax = sample_rate / 2 if fmax is None else fmax
    if not (0 <= fmin < fmax <= sample_rate / 2):
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2 = {sample_rate / 2}, got fmin={fmin}, fmax={fmax}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,) Hz
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # (n_bins,) Hz of each rfft bin
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))  # (n_mels, n_bins)


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` rows of the orthonormal DCT-II: ``y = D @ x`` equals
    ``scipy.fft.dct(x, type=2, norm="ortho")[:n_out]``."""
    _check_pos_int("n_out", n_out)
    _check_pos_int("n_in", n_in)
    if n_out > n_in:
        raise ValueError(f"n_out ({n_out}) must be <= n_in ({n_in})")
    k, n = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    D = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    D[0] /= math.sqrt(2.0)
    return D


def log_mel(x, sample_rate: float, n_fft: int = 256, hop_length: int = 80, n_mels: int = 40,
            floor: float = 1e-10) -> np.ndarray:
    """``(n_frames, n_mels)`` natural-log mel energies ``log(max(P @ F^T, floor))``."""
    P = power_spectrum(stft(x, n_fft, hop_length))  # (n_frames, n_bins)
    F = mel_filterbank(n_mels, n_fft, sample_rate)  # (n_mels, n_bins)
    return np.log(np.maximum(P @ F.T, floor))  # (n_frames, n_mels)


def mfcc(x, sample_rate: float, n_mfcc: int = 13, n_fft: int = 256, hop_length: int = 80, n_mels: int = 40,
         ) -> np.ndarray:
    """``(n_frames, n_mfcc)`` mel-frequency cepstral coefficients: :func:`log_mel` then the
    orthonormal DCT-II, first ``n_mfcc`` coefficients."""
    return log_mel(x, sample_rate, n_fft, hop_length, n_mels) @ dct_matrix(n_mfcc, n_mels).T


# ---------------------------------------------------------------------------------------------------
# Dynamic time warping


def _seq(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (T, d) or (T,) sequence, got shape {a.shape}")
    return a


def dtw_distance(a, b) -> float:
    """Dynamic time warping cost between sequences ``a (Ta, d)`` and ``b (Tb, d)``: the smallest
    sum of Euclidean frame distances along a monotone path from ``(0, 0)`` to ``(Ta-1, Tb-1)``
    with steps (1, 0), (0, 1), (1, 1). The reference loop: ``D[i, j] = c[i, j] + min(D[i-1, j],
    D[i, j-1], D[i-1, j-1])``."""
    a, b = _seq(a, "a"), _seq(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same feature width, got {a.shape[1]} and {b.shape[1]}")
    c = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # (Ta, Tb)
    D = np.full((a.shape[0] + 1, b.shape[0] + 1), np.inf)
    D[0, 0] = 0.0
    for i in range(1, a.shape[0] + 1):
        for j in range(1, b.shape[0] + 1):
            D[i, j] = c[i - 1, j - 1] + min(D[i - 1, j], D[i, j - 1], D[i - 1, j - 1])
    return float(D[-1, -1])


def _pad(seqs, name: str):
    seqs = [_seq(s, f"{name}[{i}]") for i, s in enumerate(seqs)]
    if not seqs:
        raise ValueError(f"{name} must hold at least one sequence")
    d = seqs[0].shape[1]
    if any(s.shape[1] != d for s in seqs):
        raise ValueError(f"every sequence in {name} must have the same feature width {d}")
    L = np.array([s.shape[0] for s in seqs])
    out = np.zeros((len(seqs), L.max(), d))
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, L  # (N, T_max, d), (N,)


def _dtw_block(q, Lq, r, Lr) -> np.ndarray:
    """DTW costs ``(Q, R)`` for padded queries ``q (Q, Tq, d)`` and references ``r (R, Tr, d)``."""
    Q, Tq, _ = q.shape
    R, Tr, _ = r.shape
    out = np.empty((Q, R))
    r_flat = r.reshape(R * Tr, -1)  # (R * Tr, d)
    rr = (r_flat ** 2).sum(1)
    prev = None  # row i-1 of D as (Q, R, Tr + 1); column 0 is the inf border
    for i in range(Tq):
        qi = q[:, i]  # (Q, d)
        d2 = (qi ** 2).sum(1)[:, None] + rr[None, :] - 2 * qi @ r_flat.T  # (Q, R * Tr)
        c = np.sqrt(np.maximum(d2, 0.0)).reshape(Q, R, Tr)  # (Q, R, Tr): frame i against every ref frame
        cur = np.full((Q, R, Tr + 1), np.inf)
        if prev is None:
            cur[:, :, 1:] = np.cumsum(c, axis=2)  # first row: only (0, 1) steps
        else:
            diag_up = np.minimum(prev[:, :, :-1], prev[:, :, 1:]) + c  # (Q, R, Tr): from (i-1, j-1) or (i-1, j)
            for j in range(Tr):  # the (0, 1) step is sequential along j
                cur[:, :, j + 1] = np.minimum(diag_up[:, :, j], cur[:, :, j] + c[:, :, j])
        done = Lq == i + 1  # queries whose last frame is i
        if done.any():
            out[done] = np.take_along_axis(cur[done], Lr[None, :, None], axis=2)[:, :, 0]
        prev = cur
    return out


def dtw_matrix(queries, refs, block: int = 64, progress: bool = False) -> np.ndarray:
    """``(len(queries), len(refs))`` DTW costs (:func:`dtw_distance`) for every pair, by one dynamic
    programme vectorised over pairs. Queries and references are sorted by length and cut into
    blocks of ``block``, so each block's loop runs only to its own longest sequences; cells beyond
    a pair's lengths are computed but never read (each pair's cost is read at its own
    ``(Ta-1, Tb-1)``)."""
    _check_pos_int("block", block)
    q, Lq = _pad(queries, "queries")  # (Q, Tq, d)
    r, Lr = _pad(refs, "refs")  # (R, Tr, d)
    if q.shape[2] != r.shape[2]:
        raise ValueError(f"queries and refs must have the same feature width, got {q.shape[2]} and {r.shape[2]}")
    oq, orf = np.argsort(Lq, kind="stable"), np.argsort(Lr, kind="stable")
    out = np.empty((len(Lq), len(Lr)))
    blocks = [(a, b) for a in range(0, len(Lq), block) for b in range(0, len(Lr), block)]
    if progress:
        from tqdm.auto import tqdm
        blocks = tqdm(blocks, desc="DTW blocks")
    for a, b in blocks:
        iq, ir = oq[a:a + block], orf[b:b + block]
        tq, tr = Lq[iq].max(), Lr[ir].max()
        out[np.ix_(iq, ir)] = _dtw_block(q[iq, :tq], Lq[iq], r[ir, :tr], Lr[ir])
    return out


# ---------------------------------------------------------------------------------------------------
# Speech synthesis (eSpeak NG through ctypes)

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesise in the calling thread, deliver via callback
_POS_CHARACTER = 1
_INITIALIZE_DONT_EXIT = 0x8000
_ESPEAK = {}


def _espeak():
    if "lib" not in _ESPEAK:
        try:
            import espeakng_loader
        except ImportError as e:
            raise ImportError("synthesize needs the package 'espeakng-loader' (pip install espeakng-loader), "
                              f"which ships libespeak-ng and its data: {e}") from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
                                   _INITIALIZE_DONT_EXIT)
        if sr <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {sr})")
        chunks: list = []
        cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, n, events):  # int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
            if n > 0:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0  # 0: continue synthesis

        cb = cb_type(collect)
        lib.espeak_SetSynthCallback(cb)
        _ESPEAK.update(lib=lib, sr=int(sr), chunks=chunks, cb=cb)  # keep cb alive
    return _ESPEAK


def synthesize(text: str, voice: str = "en", rate_wpm: int = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak ``text`` with eSpeak NG: ``(samples float32 in [-1, 1], sample_rate)`` (22,050 Hz).
    ``rate_wpm`` is words per minute (80..450), ``pitch`` 0..100. eSpeak NG keeps some state from one
    utterance to the next, so repeating a call may give a few milliseconds more or less audio; the
    same sequence of calls in a fresh process gives the same samples."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if not (_is_int(rate_wpm) and 80 <= rate_wpm <= 450):
        raise ValueError(f"rate_wpm must be an int in [80, 450], got {rate_wpm!r}")
    if not (_is_int(pitch) and 0 <= pitch <= 100):
        raise ValueError(f"pitch must be an int in [0, 100], got {pitch!r}")
    if not isinstance(voice, str) or not voice:
        raise TypeError(f"voice must be an eSpeak NG voice name such as 'en', got {voice!r}")
    es = _espeak()
    lib = es["lib"]
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"voice {voice!r} is not an eSpeak NG voice (try 'en', 'en-us', 'de')")
    lib.espeak_SetParameter(1, int(rate_wpm), 0)  # espeakRATE
    lib.espeak_SetParameter(3, int(pitch), 0)  # espeakPITCH
    es["chunks"].clear()
    t = text.encode()
    err = lib.espeak_Synth(t, len(t) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
    lib.espeak_Synchronize()
    if err != 0 or not es["chunks"]:
        raise RuntimeError(f"espeak_Synth failed for {text!r} (error {err})")
    x = np.concatenate(es["chunks"]).astype(np.float32) / 32768.0
    return x, es["sr"]

"""Weight-only quantization, written out, beside PyTorch's fast paths (``torch.ao`` dynamic int8 on the
CPU, torchao when it is installed).

Quantization (weight-only, ``b`` bits)::

    symmetric:  s = max|w| / (2^(b-1) - 1),            q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1)
    asymmetric: s = (max(w, 0) - min(w, 0)) / (2^b - 1), z = round(-min(w, 0) / s),
                q = clamp(round(w / s) + z, 0, 2^b - 1)
    dequantize: w_hat = s * (q - z)          (|w - w_hat| <= s / 2 element-wise)

with the statistics (max, min) taken per tensor, per output channel (row), or per group of
``group_size`` consecutive inputs within a row.
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import _check_tensor, _set_module, linear_layers

BITS = (2, 4, 8)
GRANULARITIES = ("tensor", "channel", "group")


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------
def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    return bits


# --------------------------------------------------------------------------------------------
# Quantization: the math
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes ``q`` (int8 if symmetric, uint8 if not; any ``bits``) with ``scale`` and ``zero_point``.

    For a 2-d weight (out, in): ``scale``/``zero_point`` have shape (1, 1) per tensor, (out, 1) per
    channel, (out, in // group_size) per group. ``dequantize()`` returns ``scale * (q - zero_point)``.
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    granularity: str
    group_size: int | None
    shape: tuple

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)

    def storage_bytes(self, packed: bool = True) -> int:
        """Bytes to store the codes (``bits`` per element when ``packed``, else 1 byte each), the
        fp16 scales, and the int8 zero points (asymmetric only)."""
        n = self.q.numel()
        codes = math.ceil(n * self.bits / 8) if packed else n
        return codes + 2 * self.scale.numel() + (0 if self.symmetric else self.zero_point.numel())


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)``: symmetric uses the restricted range ``[-(2^(b-1)-1), 2^(b-1)-1]``
    (so that ``-max`` and ``+max`` both map exactly), asymmetric the full unsigned ``[0, 2^b - 1]``."""
    _check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _grouped(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View ``w`` (out, in) as (rows, cols) whose last dim is one statistics group."""
    if granularity == "tensor":
        return w.reshape(1, -1)  # (1, out*in)
    out, inp = w.shape
    if granularity == "channel":
        return w  # (out, in)
    return w.reshape(out * (inp // group_size), group_size)  # (out*in/g, g)


def quantize(w: torch.Tensor, bits: int = 8, *, symmetric: bool = True,
             granularity: str = "channel", group_size: int | None = None) -> QuantizedTensor:
    """Quantize a 2-d weight ``w`` (out, in) to ``bits``-bit integer codes (see the module docstring).

    ``granularity`` is ``"tensor"`` (one scale), ``"channel"`` (one per output row) or ``"group"``
    (one per ``group_size`` consecutive inputs of a row; ``group_size`` must divide ``in``).
    """
    _check_tensor("w", w, dim=2)
    _check_bits(bits)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    out, inp = w.shape
    if granularity == "group":
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or inp % group_size:
            raise ValueError(f"group_size must be a positive int dividing the input dimension "
                             f"{inp} (w of shape {tuple(w.shape)}), got {group_size!r}")
    elif group_size is not None:
        raise ValueError(f"group_size is only used with granularity='group', got {group_size!r} "
                         f"with granularity={granularity!r}")
    qmin, qmax = qrange(bits, symmetric)
    g = _grouped(w.detach().float(), granularity, group_size)  # (rows, cols)
    if symmetric:
        amax = g.abs().amax(dim=1, keepdim=True)  # (rows, 1)
        scale = (amax / qmax).clamp(min=1e-12)
        zp = torch.zeros_like(scale)
        q = torch.clamp(torch.round(g / scale), qmin, qmax)
    else:
        lo = g.amin(dim=1, keepdim=True).clamp(max=0)  # zero must be representable exactly
        hi = g.amax(dim=1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=1e-12)
        zp = torch.clamp(torch.round(-lo / scale), qmin, qmax)
        q = torch.clamp(torch.round(g / scale) + zp, qmin, qmax)
    if granularity == "group":
        stat_shape = (out, inp // group_size)
    elif granularity == "channel":
        stat_shape = (out, 1)
    else:
        stat_shape = (1, 1)
    codes = q.reshape(out, inp).to(torch.int8 if symmetric else torch.uint8)  # (out, in)
    return QuantizedTensor(codes, scale.reshape(stat_shape),
                           zp.reshape(stat_shape).to(torch.int8 if symmetric else torch.uint8),
                           bits, bool(symmetric), granularity, group_size, (out, inp))


def dequantize(qt: QuantizedTensor, dtype=torch.float32) -> torch.Tensor:
    """``scale * (q - zero_point)``, broadcast over each statistics group; returns (out, in)."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor, got {type(qt).__name__}")
    out, inp = qt.shape
    q = qt.q.float()
    if qt.granularity == "group":
        ng = inp // qt.group_size
        q = q.reshape(out, ng, qt.group_size)  # (out, groups, g)
        w = (q - qt.zero_point.float().unsqueeze(-1)) * qt.scale.unsqueeze(-1)
        return w.reshape(out, inp).to(dtype)
    return ((q - qt.zero_point.float()) * qt.scale).to(dtype)


def fake_quantize(w: torch.Tensor, bits: int = 8, **kw) -> torch.Tensor:
    """``dequantize(quantize(w))``: the weight the quantized model effectively uses."""
    return quantize(w, bits, **kw).dequantize(w.dtype)


def quant_error(w: torch.Tensor, w_hat: torch.Tensor) -> dict:
    """Error of an approximation ``w_hat`` of ``w``: max |.|, relative Frobenius error, and the
    signal-to-quantization-noise ratio ``10 log10(||w||^2 / ||w - w_hat||^2)`` in dB."""
    _check_tensor("w", w)
    _check_tensor("w_hat", w_hat)
    if w.shape != w_hat.shape:
        raise ValueError(f"w_hat must have the shape of w {tuple(w.shape)}, got {tuple(w_hat.shape)}")
    d = (w.float() - w_hat.float())
    sig, noise = w.float().pow(2).sum().item(), d.pow(2).sum().item()
    return {"max_abs_err": d.abs().max().item(),
            "rel_fro_err": math.sqrt(noise / max(sig, 1e-30)),
            "sqnr_db": 10 * math.log10(max(sig, 1e-30) / max(noise, 1e-30))}


# --------------------------------------------------------------------------------------------
# int4 packing
# --------------------------------------------------------------------------------------------
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 codes (values in [-8, 15], last dim even) two per byte: (..., n) -> (..., n/2) uint8.

    Element ``2i`` goes to the low nibble and ``2i+1`` to the high nibble (two's complement nibbles
    for negative codes)."""
    if not isinstance(q, torch.Tensor) or q.dtype not in (torch.int8, torch.uint8, torch.int16,
                                                           torch.int32, torch.int64):
        raise TypeError(f"q must be an integer tensor, got {getattr(q, 'dtype', type(q).__name__)}")
    if q.dim() == 0 or q.shape[-1] % 2:
        raise ValueError(f"q must have an even last dimension to pack two codes per byte, got shape {tuple(q.shape)}")
    q = q.to(torch.int16)
    if q.numel() and (q.min() < -8 or q.max() > 15):
        raise ValueError(f"q values must fit in 4 bits ([-8, 15]), got range [{q.min().item()}, {q.max().item()}]")
    u = (q & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (..., n/2) uint8 -> (..., n) int8 (sign-extended if ``signed``)."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {getattr(packed, 'dtype', type(packed).__name__)}")
    lo = (packed & 0xF).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    q = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)  # (..., n)
    if signed:
        q = torch.where(q >= 8, q - 16, q)
    return q


# --------------------------------------------------------------------------------------------
# QuantLinear and quantize_model
# --------------------------------------------------------------------------------------------
class QuantLinear(nn.Module):
    """Weight-only quantized ``nn.Linear``: int8 codes, or int4 packed two per byte, plus scales.

    ``forward`` dequantizes on the fly and multiplies in the input's dtype. ``impl="dequant"``
    rebuilds the full weight ``s * (q - z)`` then calls ``F.linear`` (works for every scheme);
    ``impl="scale_after"`` (symmetric per-channel only) computes ``(x @ q^T) * s``, the form a
    fused kernel (or ``torch.compile``) turns into one pass over the int8 weight.
    """

    IMPLS = ("dequant", "scale_after")

    def __init__(self, in_features: int, out_features: int, bits: int = 8, *, bias: bool = True,
                 symmetric: bool = True, group_size: int | None = None, impl: str = "dequant"):
        super().__init__()
        _check_bits(bits)
        if bits == 2:
            raise ValueError("bits must be 4 or 8 for QuantLinear (2-bit codes are for error studies)")
        if impl not in self.IMPLS:
            raise ValueError(f"impl must be one of {self.IMPLS}, got {impl!r}")
        if group_size is not None and (not isinstance(group_size, int) or group_size < 1
                                       or in_features % group_size):
            raise ValueError(f"group_size must divide in_features={in_features}, got {group_size!r}")
        if bits == 4 and in_features % 2:
            raise ValueError(f"in_features must be even for packed int4, got {in_features}")
        if impl == "scale_after" and (group_size is not None or not symmetric):
            raise ValueError("impl='scale_after' needs symmetric per-channel scales (group_size=None)")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.symmetric, self.group_size, self.impl = symmetric, group_size, impl
        ng = 1 if group_size is None else in_features // group_size
        ncodes = in_features if bits == 8 else in_features // 2
        code_dtype = torch.int8 if (bits == 8 and symmetric) else torch.uint8  # int4: packed bytes
        self.register_buffer("qweight", torch.zeros(out_features, ncodes, dtype=code_dtype))
        self.register_buffer("scale", torch.ones(out_features, ng, dtype=torch.float16))
        self.register_buffer("zero_point", torch.zeros(out_features, ng, dtype=torch.uint8)
                             if not symmetric else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, *, symmetric: bool = True,
                    group_size: int | None = None, impl: str = "dequant") -> "QuantLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        m = cls(linear.in_features, linear.out_features, bits, bias=linear.bias is not None,
                symmetric=symmetric, group_size=group_size, impl=impl)
        gran = "channel" if group_size is None else "group"
        qt = quantize(linear.weight.detach().float(), bits, symmetric=symmetric, granularity=gran,
                      group_size=group_size)
        m.qweight.copy_(qt.q if bits == 8 else pack_int4(qt.q))
        m.scale.copy_(qt.scale.to(torch.float16))
        if not symmetric:
            m.zero_point.copy_(qt.zero_point)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach().float())
        return m.to(linear.weight.device)

    def codes(self) -> torch.Tensor:
        """The integer codes (out, in) as int16 (unpacked for int4)."""
        q = self.qweight if self.bits == 8 else unpack_int4(self.qweight, signed=self.symmetric)
        return q.to(torch.int16)

    def dequantize_weight(self, dtype=torch.float32) -> torch.Tensor:
        q = self.codes().to(dtype)  # (out, in)
        s = self.scale.to(dtype)
        if self.group_size is not None:
            q = q.view(self.out_features, -1, self.group_size)  # (out, groups, g)
            if self.zero_point is not None:
                q = q - self.zero_point.to(dtype).unsqueeze(-1)
            return (q * s.unsqueeze(-1)).view(self.out_features, self.in_features)
        if self.zero_point is not None:
            q = q - self.zero_point.to(dtype)
        return q * s

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.impl == "scale_after":
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype).view(-1)
            return y if bias is None else y + bias
        return F.linear(x, self.dequantize_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"symmetric={self.symmetric}, group_size={self.group_size}, impl={self.impl!r}")


class QuantEmbedding(nn.Module):
    """Weight-only int8 ``nn.Embedding``: one symmetric scale per row (token), looked up with the codes.

    An embedding table is read one row per token, never multiplied whole, so quantizing it saves
    memory and disk, not time; in small encoders it is half of all parameters."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, 1, dtype=torch.float16))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> "QuantEmbedding":
        if not isinstance(emb, nn.Embedding):
            raise TypeError(f"emb must be an nn.Embedding, got {type(emb).__name__}")
        m = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        qt = quantize(emb.weight.detach().float(), 8, symmetric=True, granularity="channel")
        m.qweight.copy_(qt.q)
        m.scale.copy_(qt.scale.to(torch.float16))
        return m.to(emb.weight.device)

    def forward(self, ids):
        rows = F.embedding(ids, self.qweight).float()  # (..., D) int codes
        return rows * F.embedding(ids, self.scale).float()  # (..., 1) per-row scale

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"


def quantize_embeddings(model: nn.Module, exclude: Iterable[str] = (), inplace: bool = False) -> nn.Module:
    """Replace every ``nn.Embedding`` (except names containing an ``exclude`` entry) with a
    :class:`QuantEmbedding`. Tied embeddings (a GPT's ``wte`` shared with ``lm_head``) must be
    excluded: raises ``ValueError`` when an embedding's weight is shared with another module."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = model if inplace else copy.deepcopy(model)
    exclude = tuple(exclude)
    ptr_count: dict = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            ptr_count[id(p)] = ptr_count.get(id(p), 0) + 1
    for name, emb in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]:
        if any(e in name for e in exclude):
            continue
        if ptr_count.get(id(emb.weight), 0) > 1:
            raise ValueError(f"embedding {name!r} shares its weight with another layer (tied); "
                             f"add it to exclude")
        _set_module(model, name, QuantEmbedding.from_embedding(emb))
    return model


def quantize_model(model: nn.Module, bits: int = 8, group_size: int | None = None, *,
                   symmetric: bool = True, impl: str = "dequant", exclude: Iterable[str] = ("lm_head",),
                   inplace: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` (except ``exclude``) with a :class:`QuantLinear`.

    ``group_size=None`` uses per-channel scales. Returns the new model (a deep copy unless
    ``inplace``); embeddings, norms and excluded layers stay in floating point.
    """
    _check_bits(bits)

    def make(name, lin):
        if group_size is not None and lin.in_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide in_features={lin.in_features} "
                             f"of layer {name!r}")
        return QuantLinear.from_linear(lin, bits, symmetric=symmetric, group_size=group_size, impl=impl)

    return _replace_linears(model if inplace else copy.deepcopy(model), exclude, make)


def _replace_linears(model: nn.Module, exclude: Iterable[str], make) -> nn.Module:
    """``model`` (in place) with every ``nn.Linear`` whose name contains no ``exclude`` entry
    replaced by ``make(name, linear)``."""
    for name, lin in linear_layers(model, exclude).items():
        _set_module(model, name, make(name, lin))
    return model


def rounding_noise(model: nn.Module, bits: int = 8, seed: int = 0, exclude: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` whose linear weights (except ``exclude``) each move by a random amount of
    the size of their symmetric per-channel ``bits`` rounding: ``w + u * s_j`` with ``u ~ U(-1/2, 1/2)``
    and ``s_j`` the step :func:`quantize` picks for output channel ``j``. The null model of weight
    quantization: an error as large as rounding's, in no particular direction, so that comparing
    seeds shows how much a metric moves under *any* such perturbation. An output layer tied to the
    embeddings is untied first (the embeddings stay as they were, as with :func:`quantize_model`)."""
    _check_bits(bits)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))  # > 1: a tied weight
    with torch.no_grad():
        for lin in linear_layers(model, exclude).values():
            w = lin.weight
            if uses[id(w)] > 1:
                lin.weight = w = nn.Parameter(w.detach().clone())  # tied (lm_head = embeddings): untie
            step = quantize(w.detach(), bits, symmetric=True, granularity="channel").scale  # (out, 1)
            u = torch.rand(w.shape, generator=gen, dtype=torch.float32) - 0.5
            w.add_((u * step.float()).to(w.device, w.dtype))
    return model


def layer_quant_errors(model: nn.Module, bits: int = 8, *, symmetric: bool = True,
                       granularity: str = "channel", group_size: int | None = None,
                       exclude: Iterable[str] = ("lm_head",)) -> list[dict]:
    """Per-layer weight error of quantizing each linear layer: one row per layer (see :func:`quant_error`)."""
    rows = []
    for name, lin in linear_layers(model, exclude).items():
        w = lin.weight.detach().float()
        err = quant_error(w, fake_quantize(w, bits, symmetric=symmetric, granularity=granularity,
                                           group_size=group_size))
        rows.append({"layer": name, "shape": tuple(w.shape), "bits": bits, "granularity": granularity,
                     "symmetric": symmetric, **err})
    return rows


def dynamic_int8(model: nn.Module, exclude: Iterable[str] = (), per_channel: bool = False) -> nn.Module:
    """PyTorch's CPU path: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` whose
    name contains no ``exclude`` entry: int8 weights (per tensor, or per output channel with
    ``per_channel``) and activations quantized on the fly, per batch, to 8 bits. Returns a copy."""
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    names = linear_layers(model, exclude)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).cpu().float(), {n: qconfig for n in names},
                                dtype=torch.qint8)


class Int8DynamicLinear(nn.Module):
    """W8A8 ``nn.Linear`` without bias: int8 weights with one scale per output channel, the input
    quantized to int8 on the fly with one scale per *token* (row), an int8 x int8 -> int32 matmul
    (``torch._int_mm``, oneDNN on the CPU), then both scales applied:

        y_tj = s_t * w_j * sum_i q(x)_ti q(W)_ji,   s_t = max_i |x_ti| / 127,  w_j = max_i |W_ji| / 127

    A per-token scale lets one outlier token not coarsen the others (``torch.ao``'s dynamic int8
    has one scale for the whole batch); an outlier *channel* still coarsens its token, which is
    what :mod:`bmlib.compress.smooth` addresses."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        for name, v, lo in (("in_features", in_features, 2), ("out_features", out_features, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:  # torch._int_mm miscounts K = 1
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8DynamicLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if linear.bias is not None:
            raise ValueError("Int8DynamicLinear has no bias: linear.bias must be None")
        m = cls(linear.in_features, linear.out_features)
        qt = quantize(linear.weight.detach().float(), 8, symmetric=True, granularity="channel")
        m.qweight.copy_(qt.q)
        m.scale.copy_(qt.scale.view(-1))
        return m.to(linear.weight.device)

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be a float tensor (..., {self.in_features}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        x2 = x.reshape(-1, self.in_features).float()  # (N, in): one row per token
        if x2.is_cuda and x2.shape[0] <= 16:
            raise ValueError(f"on CUDA, torch._int_mm needs more than 16 rows (tokens), got {x2.shape[0]}")
        s = x2.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127  # (N, 1)
        q = torch.round(x2 / s).to(torch.int8)  # |x / s| <= 127: no clamp needed
        y = torch._int_mm(q, self.qweight.t())  # (N, out) int32; the weight stays (out, in) in memory
        return (y * s * self.scale).view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 x int8 per token"


def w8a8(model: nn.Module, exclude: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` (except names containing an ``exclude`` entry)
    replaced by an :class:`Int8DynamicLinear`; a tied output layer gets its own int8 copy."""
    return _replace_linears(copy.deepcopy(model), exclude, lambda _, lin: Int8DynamicLinear.from_linear(lin))


class Int8WeightOnlyLinear(nn.Module):
    """Weight-only int8 ``nn.Linear`` without bias, on a fused CPU kernel: the weight is stored as
    int8 with one scale per output channel (as :class:`QuantLinear`), and
    ``torch.ops.aten._weight_int8pack_mm`` multiplies the input by it *without* materialising a
    floating-point weight: each weight is read as 1 byte instead of 4, which is what a
    bandwidth-bound decode step pays for. The input is cast to ``act_dtype`` (bfloat16 by default:
    the dtype this kernel is fast in; ``float32`` runs the same kernel exactly, for checking) and
    the output cast back to the input's dtype:

        y_tj = w_j * sum_i x_ti q(W)_ji,   w_j = max_i |W_ji| / 127 (rounded to act_dtype)

    A CPU kernel: on CUDA, torchao's int8 weight-only configs are the way (not this module)."""

    ACT_DTYPES = (torch.bfloat16, torch.float32)

    def __init__(self, in_features: int, out_features: int, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if in_features % 16:  # torch 2.13's CPU kernel crashes or returns garbage otherwise (more than one row)
            raise ValueError(f"in_features must be a multiple of 16 for _weight_int8pack_mm, got {in_features}")
        if act_dtype not in self.ACT_DTYPES:
            raise ValueError(f"act_dtype must be one of {self.ACT_DTYPES}, got {act_dtype!r}")
        self.in_features, self.out_features, self.act_dtype = in_features, out_features, act_dtype
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, dtype=act_dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16) -> "Int8WeightOnlyLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if linear.bias is not None:
            raise ValueError("Int8WeightOnlyLinear has no bias: linear.bias must be None")
        if linear.weight.device.type != "cpu":
            raise ValueError(f"Int8WeightOnlyLinear runs a CPU kernel: linear is on {linear.weight.device}")
        m = cls(linear.in_features, linear.out_features, act_dtype)
        qt = quantize(linear.weight.detach().float(), 8, symmetric=True, granularity="channel")
        m.qweight.copy_(qt.q)
        m.scale.copy_(qt.scale.view(-1))
        return m

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be a float tensor (..., {self.in_features}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"Int8WeightOnlyLinear runs a CPU kernel: x is on {x.device}")
        x2 = x.reshape(-1, self.in_features).to(self.act_dtype)  # (N, in)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)  # (N, out) in act_dtype
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, "
                f"{str(self.act_dtype).removeprefix('torch.')} activations")


def int8_weight_only(model: nn.Module, exclude: Iterable[str] = (), act_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` (except names containing an ``exclude`` entry)
    replaced by an :class:`Int8WeightOnlyLinear`; a tied output layer gets its own int8 copy (the
    embeddings stay in floating point)."""
    return _replace_linears(copy.deepcopy(model), exclude,
                            lambda _, lin: Int8WeightOnlyLinear.from_linear(lin, act_dtype))


def torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
        return True
    except ImportError:
        return False


def torchao_quantize(model: nn.Module, scheme: str) -> nn.Module:
    """torchao's weight-only int8/int4 or float8 (``scheme`` in ``"int8wo"|"int4wo"|"float8"``) on a copy.

    Raises ``ImportError`` when torchao is not installed (it is optional; the book's hand-written
    :class:`QuantLinear` is the reference)."""
    schemes = ("int8wo", "int4wo", "float8")
    if scheme not in schemes:
        raise ValueError(f"scheme must be one of {schemes}, got {scheme!r}")
    try:
        from torchao import quantization as tq
    except ImportError as e:
        raise ImportError("torchao is not installed: pip install torchao") from e
    cfg = {"int8wo": lambda: tq.Int8WeightOnlyConfig(),
           "int4wo": lambda: tq.Int4WeightOnlyConfig(group_size=128),
           "float8": lambda: tq.Float8DynamicActivationFloat8WeightConfig()}[scheme]()
    m = copy.deepcopy(model)
    tq.quantize_(m, cfg)
    return m

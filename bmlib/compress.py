"""Model compression, written out: quantization, pruning, distillation and low-rank adapters.

Every technique is a few lines of plain PyTorch the reader can check against the math, with
PyTorch's own fast path beside it where one exists (``torch.ao`` dynamic int8 on the CPU,
``torch.sparse.to_sparse_semi_structured`` on a CUDA GPU, torchao when it is installed).

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
import io
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

BITS = (2, 4, 8)
GRANULARITIES = ("tensor", "channel", "group")


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------
def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    return bits


def _check_tensor(name: str, t, dim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-d tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _check_fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < v <= 1.0):
        raise ValueError(f"{name} must be a number in (0, 1], got {v!r}")
    return float(v)


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


def linear_layers(model: nn.Module, exclude: Iterable[str] = ("lm_head",)) -> dict:
    """``{qualified name: nn.Linear}`` for every linear layer whose name does not contain an
    ``exclude`` entry (the GPT's ``lm_head`` shares its weight with the token embedding)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    exclude = tuple(exclude)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(e in n for e in exclude)}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize_model(model: nn.Module, bits: int = 8, group_size: int | None = None, *,
                   symmetric: bool = True, impl: str = "dequant", exclude: Iterable[str] = ("lm_head",),
                   inplace: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` (except ``exclude``) with a :class:`QuantLinear`.

    ``group_size=None`` uses per-channel scales. Returns the new model (a deep copy unless
    ``inplace``); embeddings, norms and excluded layers stay in floating point.
    """
    _check_bits(bits)
    model = model if inplace else copy.deepcopy(model)
    for name, lin in linear_layers(model, exclude).items():
        if group_size is not None and lin.in_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide in_features={lin.in_features} "
                             f"of layer {name!r}")
        _set_module(model, name, QuantLinear.from_linear(lin, bits, symmetric=symmetric,
                                                         group_size=group_size, impl=impl))
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


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------
def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask zeroing the ``round(sparsity * numel)`` smallest-|w| entries (ties by index)."""
    _check_tensor("w", w)
    sparsity = _check_sparsity(sparsity)
    k = int(round(sparsity * w.numel()))
    mask = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    if k:
        idx = torch.argsort(w.detach().abs().flatten(), stable=True)[:k]
        mask[idx] = False
    return mask.view_as(w)


def prune_magnitude(model: nn.Module, sparsity: float, scope: str = "global",
                    exclude: Iterable[str] = ("lm_head",)) -> dict:
    """Unstructured magnitude pruning of every linear weight, in place; returns ``{name: mask}``.

    ``scope="layer"`` removes ``sparsity`` of each layer; ``scope="global"`` ranks all weights
    together, so layers with many small weights lose more."""
    sparsity = _check_sparsity(sparsity)
    scopes = ("global", "layer")
    if scope not in scopes:
        raise ValueError(f"scope must be one of {scopes}, got {scope!r}")
    layers = linear_layers(model, exclude)
    masks = {}
    with torch.no_grad():
        if scope == "layer":
            for name, lin in layers.items():
                masks[name] = magnitude_mask(lin.weight, sparsity)
        else:
            flat = torch.cat([lin.weight.detach().abs().flatten() for lin in layers.values()])
            allmask = magnitude_mask(flat, sparsity)
            start = 0
            for name, lin in layers.items():
                n = lin.weight.numel()
                masks[name] = allmask[start:start + n].view_as(lin.weight)
                start += n
        for name, lin in layers.items():
            lin.weight.mul_(masks[name].to(lin.weight.dtype))
    return masks


def sparsity_of(model_or_tensor, exclude: Iterable[str] = ("lm_head",)) -> float:
    """Fraction of exactly-zero weights in a tensor, or across a model's linear weights."""
    if isinstance(model_or_tensor, torch.Tensor):
        return (model_or_tensor == 0).float().mean().item()
    layers = linear_layers(model_or_tensor, exclude)
    zeros = sum((l.weight == 0).sum().item() for l in layers.values())
    return zeros / max(1, sum(l.weight.numel() for l in layers.values()))


def mask_2to4(w: torch.Tensor) -> torch.Tensor:
    """2:4 semi-structured keep-mask: in each run of 4 consecutive inputs of a row, keep the 2 with
    the largest |w|. ``w`` is (out, in) with ``in`` divisible by 4 (NVIDIA sparse tensor cores)."""
    _check_tensor("w", w, dim=2)
    out, inp = w.shape
    if inp % 4:
        raise ValueError(f"w must have an input dimension divisible by 4 for 2:4 sparsity, got shape {tuple(w.shape)}")
    g = w.detach().abs().reshape(out, inp // 4, 4)  # (out, in/4, 4)
    top = g.topk(2, dim=-1).indices  # (out, in/4, 2)
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(out, inp)


def to_sparse_24(linear: nn.Linear) -> nn.Linear:
    """A copy of ``linear`` with 2:4-pruned weights stored as ``torch.sparse`` semi-structured
    (cuSPARSELt/CUTLASS kernels). CUDA fp16/bf16 only; raises ``RuntimeError`` elsewhere."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    if not torch.cuda.is_available() or linear.weight.device.type != "cuda":
        raise RuntimeError("to_sparse_24 needs the linear layer on a CUDA GPU (compute capability >= 8.0)")
    if linear.weight.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"linear.weight must be float16 or bfloat16 for semi-structured sparsity, "
                         f"got {linear.weight.dtype}")
    from torch.sparse import to_sparse_semi_structured

    m = copy.deepcopy(linear)
    with torch.no_grad():
        w = m.weight * mask_2to4(m.weight)
    m.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
    return m


def mlp_neuron_scores(mlp: nn.Module) -> torch.Tensor:
    """Magnitude importance of each hidden neuron j of a GPT MLP: ``||c_fc.W[j,:]|| * ||c_proj.W[:,j]||``."""
    return mlp.c_fc.weight.detach().norm(dim=1) * mlp.c_proj.weight.detach().norm(dim=0)


def head_scores(attn: nn.Module, n_head: int) -> torch.Tensor:
    """Magnitude importance of each head h: ``||W_v rows of h|| * ||c_proj columns of h||``."""
    C = attn.c_proj.weight.shape[0]
    inner = attn.c_proj.weight.shape[1]
    hs = inner // n_head
    wv = attn.c_attn.weight.detach()[2 * inner:].view(n_head, hs, C)  # (nh, hs, C)
    wo = attn.c_proj.weight.detach().view(C, n_head, hs)  # (C, nh, hs)
    return wv.flatten(1).norm(dim=1) * wo.transpose(0, 1).flatten(1).norm(dim=1)


def _keep_top(scores: torch.Tensor, keep: float, name: str) -> torch.Tensor:
    keep = _check_fraction(name, keep)
    k = max(1, int(round(keep * scores.numel())))
    return scores.topk(k).indices.sort().values


def _sliced_linear(lin: nn.Linear, rows=None, cols=None) -> nn.Linear:
    w = lin.weight.detach()
    b = None if lin.bias is None else lin.bias.detach()
    if rows is not None:
        w = w[rows]
        b = None if b is None else b[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def prune_mlp_neurons(model: nn.Module, keep: float, scores: dict | None = None) -> tuple:
    """Structured pruning of a GPT's MLP hidden neurons: returns ``(smaller model, {layer: kept idx})``.

    Block i keeps the ``round(keep * 4C)`` neurons with the highest score (``scores[i]``, default
    :func:`mlp_neuron_scores`); ``c_fc`` loses rows and ``c_proj`` loses columns, so the matrices
    really shrink. The kept neurons compute exactly what they computed before."""
    new = copy.deepcopy(model)
    kept = {}
    for i, block in enumerate(new.transformer.h):
        s = scores[i] if scores is not None else mlp_neuron_scores(block.mlp)
        idx = _keep_top(s, keep, "keep")
        kept[i] = idx
        block.mlp.c_fc = _sliced_linear(block.mlp.c_fc, rows=idx)
        block.mlp.c_proj = _sliced_linear(block.mlp.c_proj, cols=idx)
    return new, kept


class PrunedSelfAttention(nn.Module):
    """Causal self-attention with ``n_head`` heads of size ``head_dim`` whose total (n_head*head_dim)
    may be smaller than the residual width: what remains of a GPT attention after head pruning.
    Same call signature as the GPT's attention (no KV cache: the cache is sized for the full model)."""

    def __init__(self, c_attn: nn.Linear, c_proj: nn.Linear, n_head: int, head_dim: int,
                 attn_impl: str = "sdpa"):
        super().__init__()
        self.c_attn, self.c_proj = c_attn, c_proj
        self.n_head, self.head_dim, self.attn_impl = n_head, head_dim, attn_impl

    def forward(self, x, kv_cache=None, layer: int = 0, mask=None):
        from .attention import attention

        if kv_cache is not None:
            raise ValueError("kv_cache is not supported after head pruning (pass kv_cache=None)")
        B, T, _ = x.shape
        nh, hs = self.n_head, self.head_dim
        q, k, v = self.c_attn(x).split(nh * hs, dim=2)  # 3 x (B, T, nh*hs)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = attention(q, k, v, causal=True, mask=mask, impl=self.attn_impl)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, nh*hs)
        return self.c_proj(y)


def prune_heads(model: nn.Module, keep: float, scores: dict | None = None) -> tuple:
    """Structured pruning of a GPT's attention heads: returns ``(smaller model, {layer: kept heads})``.

    Block i keeps the ``round(keep * n_head)`` highest-scoring heads (``scores[i]``, default
    :func:`head_scores`): their q, k, v rows of ``c_attn`` and their columns of ``c_proj``."""
    cfg = model.config
    nh, hs, C = cfg.n_head, cfg.head_dim, cfg.n_embd
    new = copy.deepcopy(model)
    kept = {}
    for i, block in enumerate(new.transformer.h):
        attn = block.attn
        s = scores[i] if scores is not None else head_scores(attn, nh)
        heads = _keep_top(s, keep, "keep")
        kept[i] = heads
        cols = (heads[:, None] * hs + torch.arange(hs)).flatten()  # inner indices of kept heads
        rows = torch.cat([cols, C + cols, 2 * C + cols])  # q, k, v rows
        block.attn = PrunedSelfAttention(_sliced_linear(attn.c_attn, rows=rows),
                                         _sliced_linear(attn.c_proj, cols=cols), len(heads), hs,
                                         cfg.attn_impl)
    return new, kept


# --------------------------------------------------------------------------------------------
# Knowledge distillation
# --------------------------------------------------------------------------------------------
def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor | None = None, temperature: float = 2.0,
                      alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """Hinton et al. (2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    Logits are (..., V); the KL is summed over the vocabulary and averaged over positions (those
    whose target is not ``ignore_index``). The ``T^2`` keeps the soft-target gradients on the
    scale of the hard ones as T changes. ``targets=None`` requires ``alpha=1``."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits "
                         f"{tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    V = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, V)  # (N, V)
    t = teacher_logits.detach().float().reshape(-1, V)  # (N, V)
    if targets is None:
        if alpha != 1.0:
            raise ValueError(f"targets are required unless alpha == 1, got alpha={alpha!r}")
        keep = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    else:
        if targets.shape != student_logits.shape[:-1]:
            raise ValueError(f"targets must have shape {tuple(student_logits.shape[:-1])}, got {tuple(targets.shape)}")
        keep = targets.reshape(-1) != ignore_index
    T = float(temperature)
    log_ps = F.log_softmax(s / T, dim=-1)
    log_pt = F.log_softmax(t / T, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # (N,)
    soft = kl[keep].mean() * T * T
    if alpha == 1.0:
        return soft
    hard = F.cross_entropy(s, targets.reshape(-1), ignore_index=ignore_index)
    return alpha * soft + (1 - alpha) * hard


class Distiller(nn.Module):
    """Wraps a student with a frozen teacher so the book's one training loop trains it:
    ``forward(x, y) -> (student logits, distillation loss)``. Only the student's parameters are
    registered (the teacher is held outside ``parameters()``); ``.student`` is the trained model."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 2.0,
                 alpha: float = 0.5):
        super().__init__()
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                          temperature, alpha)  # validates temperature and alpha
        self.student = student
        self._teacher = (teacher.eval().requires_grad_(False),)
        self.temperature, self.alpha = temperature, alpha

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def forward(self, x, y=None):
        logits, hard = self.student(x, y)
        if y is None:
            return logits, hard
        with torch.no_grad():
            t_logits, _ = self.teacher(x)
        return logits, distillation_loss(logits, t_logits, y, self.temperature, self.alpha)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._teacher[0]._apply(fn, *args, **kwargs)
        return self


# --------------------------------------------------------------------------------------------
# Low rank: SVD and LoRA
# --------------------------------------------------------------------------------------------
class LowRankLinear(nn.Module):
    """``y = up(down(x))``: a rank-``r`` factorisation ``W ~ B A`` with A (r, in), B (out, r)."""

    def __init__(self, down: nn.Linear, up: nn.Linear):
        super().__init__()
        self.down, self.up = down, up
        self.in_features, self.out_features, self.rank = down.in_features, up.out_features, down.out_features

    def forward(self, x):
        return self.up(self.down(x))

    def weight_approx(self) -> torch.Tensor:
        return self.up.weight @ self.down.weight


def svd_factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    """Best rank-``rank`` approximation of ``linear.weight`` (Eckart-Young): ``W = U S V^T``,
    ``A = sqrt(S_r) V_r^T``, ``B = U_r sqrt(S_r)``. Saves parameters when ``r (in + out) < in * out``."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    out, inp = linear.weight.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not (1 <= rank <= min(out, inp)):
        raise ValueError(f"rank must be an int in [1, {min(out, inp)}] for a weight of shape {(out, inp)}, got {rank!r}")
    U, S, Vh = torch.linalg.svd(linear.weight.detach().float(), full_matrices=False)
    r = S[:rank].sqrt()
    down = nn.Linear(inp, rank, bias=False)
    up = nn.Linear(rank, out, bias=linear.bias is not None)
    dt, dev = linear.weight.dtype, linear.weight.device
    with torch.no_grad():
        down.weight.copy_(r[:, None] * Vh[:rank])  # (r, in)
        up.weight.copy_(U[:, :rank] * r[None, :])  # (out, r)
        if linear.bias is not None:
            up.bias.copy_(linear.bias.detach())
    return LowRankLinear(down, up).to(device=dev, dtype=dt)


def low_rank_error(w: torch.Tensor, rank: int) -> float:
    """Frobenius error of the truncated SVD of ``w`` at ``rank`` (= sqrt of the tail sum of sigma^2)."""
    _check_tensor("w", w, dim=2)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return (w.float() - svd_factorize(lin, rank).weight_approx().float()).norm().item()


class LoRALinear(nn.Module):
    """LoRA (Hu et al., 2021): ``y = base(x) + (alpha / r) * x A^T B^T`` with the base frozen.

    ``A`` (r, in) starts Kaiming-uniform and ``B`` (out, r) at zero, so training starts exactly at
    the base model; only ``A`` and ``B`` train. :meth:`merge` folds ``(alpha/r) B A`` into the weight."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or not (1 <= r <= min(base.in_features, base.out_features)):
            raise ValueError(f"r must be an int in [1, {min(base.in_features, base.out_features)}], got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x):
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, in)

    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight ``W + (alpha/r) B A`` (same outputs, no extra latency)."""
        lin = copy.deepcopy(self.base)
        with torch.no_grad():
            lin.weight.add_(self.delta_weight().to(lin.weight.dtype))
        return lin.requires_grad_(True)


def add_lora(model: nn.Module, targets: Iterable[str], r: int = 8, alpha: float = 16.0,
             dropout: float = 0.0, train: Iterable[str] = ()) -> nn.Module:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose name ends with one of ``targets`` in a
    :class:`LoRALinear` (in place). Parameters whose name contains a ``train`` entry (e.g. a new
    classifier head) stay trainable. Returns the model."""
    targets, train = tuple(targets), tuple(train)
    if not targets:
        raise ValueError("targets must name at least one linear layer suffix, e.g. ('query', 'value')")
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(targets)]
    if not names:
        raise ValueError(f"targets {targets} match no nn.Linear in the model")
    for n in names:
        _set_module(model, n, LoRALinear(model.get_submodule(n), r, alpha, dropout))
    for n, p in model.named_parameters():
        if any(t in n for t in train):
            p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` by its merged ``nn.Linear`` (in place)."""
    for n, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            _set_module(model, n, m.merge())
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters; ``trainable_only`` counts those with ``requires_grad``."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


# --------------------------------------------------------------------------------------------
# Size on disk and in memory
# --------------------------------------------------------------------------------------------
def memory_bytes(model: nn.Module) -> int:
    """Bytes of the model's unique parameter and buffer storage (tied weights once). Models from
    ``torch.ao`` dynamic quantization keep their weights in packed params: counted from the state dict."""
    seen, n = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        n += t.numel() * t.element_size()
    if any("_packed_params" in k for k in model.state_dict()):
        n = sum(t.numel() * t.element_size() for t in _flat_state_tensors(model))
    return n


def _flat_state_tensors(model: nn.Module):
    seen = set()
    for k, v in model.state_dict().items():
        items = v if isinstance(v, tuple) else (v,)
        for t in items:
            if isinstance(t, torch.Tensor):
                if t.is_quantized:
                    t = t.int_repr()
                key = (t.data_ptr(), t.numel())
                if key not in seen:
                    seen.add(key)
                    yield t


def disk_bytes(model: nn.Module, format: str = "safetensors") -> int:
    """Size of the serialised state dict: ``"safetensors"`` (shared tensors stored once) or
    ``"torch"`` (``torch.save``; the only one that can hold ``torch.ao`` packed weights)."""
    formats = ("safetensors", "torch")
    if format not in formats:
        raise ValueError(f"format must be one of {formats}, got {format!r}")
    if format == "torch":
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.getbuffer().nbytes
    from safetensors.torch import save

    unique, seen = {}, set()
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"format='safetensors' cannot store {k!r} ({type(v).__name__}); use format='torch'")
        key = (v.data_ptr(), v.numel(), v.dtype)
        if key not in seen:  # tied weights (lm_head = wte) once
            seen.add(key)
            unique[k] = v.detach().contiguous()
    return len(save(unique))


def pareto_front(costs, qualities, higher_is_better: bool = False) -> list[int]:
    """Indices of the non-dominated points, ordered by cost: no other point has a cost <= and a
    quality at least as good, with one of the two strictly better. ``costs`` (size, latency) are
    always lower-is-better; ``higher_is_better`` says which way ``qualities`` go."""
    costs, qualities = list(costs), list(qualities)
    if len(costs) != len(qualities):
        raise ValueError(f"costs and qualities must have the same length, got {len(costs)} and {len(qualities)}")
    if not all(math.isfinite(float(v)) for v in costs + qualities):
        raise ValueError("costs and qualities must be finite numbers")
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(range(len(costs)), key=lambda i: (costs[i], sign * qualities[i]))
    front, best = [], math.inf
    for i in order:
        q = sign * qualities[i]
        if q < best:
            front.append(i)
            best = q
    return front

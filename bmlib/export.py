"""Export to ONNX and run on ONNX Runtime: the book's path from a PyTorch model to an inference engine.

:func:`export_onnx` uses the dynamo-based ``torch.onnx.export(..., dynamo=True)`` with named dynamic
axes (batch and sequence), :func:`ort_session` opens the file with an explicit execution provider
(no silent choice: ``"cpu"`` or ``"cuda"``), :func:`ort_run` runs it on numpy inputs, and
:func:`ort_quantize_int8` applies ONNX Runtime's own dynamic int8 quantization (int8 weights,
activations quantized per batch at run time). :func:`max_abs_diff` is how parity with eager PyTorch
is asserted, with the per-dtype tolerances of :data:`TOLERANCE`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
TOLERANCE = {"fp32": 1e-4, "int8": 0.15}  # max |logit difference| vs eager fp32


class LogitsOnly(torch.nn.Module):
    """Wrap a model of one or two inputs whose forward returns a tuple or a model output, so the
    exported graph has one output: the first element, or ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module, output: str = "first"):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x0, x1=None):  # explicit arguments: torch.export names them (not *args)
        out = self.model(x0) if x1 is None else self.model(x0, x1)
        if self.output == "last_hidden_state":
            return out.last_hidden_state
        return out[0] if isinstance(out, (tuple, list)) else out


def export_onnx(model: torch.nn.Module, example_inputs: tuple, path, input_names: Sequence[str],
                dynamic: dict[str, dict[int, str]], output_name: str = "output") -> Path:
    """Export ``model(*example_inputs)`` to ``path``; ``dynamic`` maps input name -> {axis: name}."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, tuple) or len(example_inputs) != len(input_names):
        raise ValueError(f"example_inputs must be a tuple of {len(input_names)} tensors (one per "
                         f"input name {list(input_names)}), got {type(example_inputs).__name__}")
    unknown = set(dynamic) - set(input_names)
    if unknown:
        raise ValueError(f"dynamic names inputs {sorted(unknown)} that are not in input_names")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dims = {n: torch.export.Dim(n) for axes in dynamic.values() for n in axes.values()}  # one Dim per name
    shapes = tuple({axis: dims[n] for axis, n in dynamic.get(name, {}).items()} or None for name in input_names)
    prog = torch.onnx.export(model, example_inputs, dynamo=True, input_names=list(input_names),
                             output_names=[output_name], dynamic_shapes=shapes, verbose=False)
    prog.save(str(path))
    return path


def ort_session(path, device: str = "cpu", threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on ``device`` ("cpu" or "cuda"), refusing a missing provider."""
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise ValueError(f"device must be one of {sorted(PROVIDERS)}, got {device!r}")
    provider = PROVIDERS[device]
    if provider not in ort.get_available_providers():
        raise ValueError(f"device={device!r} needs {provider}, which this onnxruntime build lacks "
                         f"(it has {ort.get_available_providers()})")
    if not Path(path).is_file():
        raise ValueError(f"path must be an existing .onnx file, got {str(path)!r}")
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=[provider])


def ort_run(session, **inputs) -> np.ndarray:
    """Run ``session`` on named numpy (or CPU tensor) inputs; returns the first output."""
    expected = [i.name for i in session.get_inputs()]
    if sorted(inputs) != sorted(expected):
        raise ValueError(f"inputs must be exactly {expected}, got {sorted(inputs)}")
    feed = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in inputs.items()}
    return session.run(None, feed)[0]


def ort_quantize_int8(path_in, path_out) -> Path:
    """ONNX Runtime's dynamic int8 quantization of every MatMul/Gemm weight (per channel).

    The dynamo exporter writes ``value_info`` shapes for initializers that ONNX's strict shape
    inference (run by the quantizer) rejects ("Inferred shape and existing shape differ"); they are
    only hints, so they are dropped from a copy (``<path_out>.noinfo.onnx``, deleted afterwards) and
    shapes are inferred afresh."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not Path(path_in).is_file():
        raise ValueError(f"path_in must be an existing .onnx file, got {str(path_in)!r}")
    path_out = Path(path_out)
    path_out.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(path_in))
    del model.graph.value_info[:]
    tmp = path_out.with_suffix(".noinfo.onnx")
    onnx.save(model, str(tmp))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a "consider pre-processing" advice on root
    try:
        quantize_dynamic(str(tmp), str(path_out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
    return path_out


def max_abs_diff(a, b) -> float:
    """max |a - b| over two arrays or tensors of the same shape."""
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float32)
    b = b.detach().float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max())

"""Model compression, written out: quantization, pruning, distillation and low-rank adapters.

Every technique is a few lines of plain PyTorch the reader can check against the math, with
PyTorch's own fast path beside it where one exists (``torch.ao`` dynamic int8 on the CPU,
``torch.sparse.to_sparse_semi_structured`` on a CUDA GPU, torchao when it is installed).

- :mod:`bmlib.compress.quant`: weight-only quantization (``quantize``, ``QuantLinear``, ``quantize_model``, ...)
  and W8A8 with per-token activation scales (``Int8DynamicLinear``, ``w8a8``)
- :mod:`bmlib.compress.smooth`: SmoothQuant's scales folded into a Llama (``input_absmax``, ``smooth_llama``)
- :mod:`bmlib.compress.prune`: magnitude, 2:4 and structured (neurons, heads) pruning
- :mod:`bmlib.compress.distill`: ``distillation_loss`` and ``Distiller``
- :mod:`bmlib.compress.lowrank`: truncated SVD (``svd_factorize``) and LoRA
- :mod:`bmlib.compress.size`: parameter counts, bytes in memory and on disk, ``pareto_front``
"""
from ._common import linear_layers
from .distill import Distiller, distillation_loss
from .lowrank import LoRALinear, LowRankLinear, add_lora, low_rank_error, merge_lora, svd_factorize
from .prune import (head_scores, magnitude_mask, mask_2to4, mlp_neuron_scores, prune_heads, prune_magnitude,
                    prune_mlp_neurons, sparsity_of, to_sparse_24)
from .quant import (BITS, GRANULARITIES, Int8DynamicLinear, Int8WeightOnlyLinear, QuantEmbedding, QuantizedTensor,
                    QuantLinear, dequantize, dynamic_int8, fake_quantize, int8_weight_only, layer_quant_errors,
                    pack_int4, qrange, quant_error, quantize, quantize_embeddings, quantize_model, rounding_noise,
                    torchao_available, torchao_quantize, unpack_int4, w8a8)
from .size import count_parameters, disk_bytes, memory_bytes, pareto_front

__all__ = [
    "BITS", "GRANULARITIES", "QuantizedTensor", "qrange", "quantize", "dequantize", "fake_quantize",
    "quant_error", "pack_int4", "unpack_int4", "QuantLinear", "QuantEmbedding", "quantize_embeddings",
    "quantize_model", "rounding_noise", "layer_quant_errors", "dynamic_int8", "Int8DynamicLinear", "w8a8",
    "Int8WeightOnlyLinear", "int8_weight_only", "torchao_available", "torchao_quantize",
    "linear_layers",
    "magnitude_mask", "prune_magnitude", "sparsity_of", "mask_2to4", "to_sparse_24", "mlp_neuron_scores",
    "head_scores", "prune_mlp_neurons", "prune_heads",
    "distillation_loss", "Distiller",
    "LowRankLinear", "svd_factorize", "low_rank_error", "LoRALinear", "add_lora", "merge_lora",
    "count_parameters", "memory_bytes", "disk_bytes", "pareto_front",
]

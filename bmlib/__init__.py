"""bmlib: the tested package behind the executable book "Large Models, Measured".

One concept per module: ``env`` (scale, device, seeds, provenance), ``hw`` (peaks as data),
``bench`` (the timing primitive), ``attention``, ``models`` (one family per file), ``data``,
``train``, ``generate``, ``metrics``, ``compress``, ``plot``, ``results``, ``io``.
Submodules are imported on use, so ``import bmlib`` stays cheap.
"""
__version__ = "0.1.0"

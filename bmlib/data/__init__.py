"""Offline data for the book: every loader reads from an installed package, never the network.

Each loader keeps a normalised copy of what it loaded (``.npz`` plus its sha256) under
``artifacts/data/`` via :mod:`bmlib.data.store`, so a machine without the source package (the GPU
box) can use the copy, and fails with a message naming the package to install otherwise.
Submodules: ``store`` (cache + checksums), and one module per source.
"""

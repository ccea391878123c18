"""``rlmesh.numpy``: the NumPy backend.

Value helpers with tensor leaves decoded to NumPy arrays (the clients come with
the control channel). Install with ``pip install "rlmesh[numpy]"``.

Conversion semantics:

* :func:`asarray` returns a writable copy (``obs /= 255.0`` works); the
  zero-copy read-only view is ``numpy.from_dlpack(tensor)``.
* :func:`from_array` always copies into a fresh tensor; scalars become
  Python primitives.
* bfloat16 needs ``ml_dtypes`` (``rlmesh[bfloat16]``).
"""

from __future__ import annotations

from .backends.numpy import asarray, ensure_available, from_array, space_from_spec

__all__ = ["asarray", "ensure_available", "from_array", "space_from_spec"]

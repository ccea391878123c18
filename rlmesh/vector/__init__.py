"""The vector fast path: worker processes stepping lanes straight into shared memory.

``EnvServer(source, num_envs=N, workers=W)`` (``vectorization_mode="async"``,
the default where it applies) runs the N lanes in W worker processes per
session (:mod:`rlmesh.vector.pool`); the client steps them directly through
one shared-memory segment (:mod:`rlmesh.vector.lanes`, laid out by
:mod:`rlmesh.vector._layout`), never through the server process. See
docs/internals.md, "The vector fast path".

Nothing is imported here: the submodules need numpy, and ``import rlmesh``
must not.
"""

"""``rlmesh.wire``: how a session's messages travel (layer 3).

The wire package is the first to know both halves of layer 2: it puts
:mod:`rlmesh.net` frames and :mod:`rlmesh.shm` rings and slabs to work for
one session.

* :mod:`~rlmesh.wire.protocol` — message kinds, operations, error codes;
* :mod:`~rlmesh.wire.codec` — value trees to msgpack and back, tensors inline
  in the frame tail or as handles into shared memory;
* :mod:`~rlmesh.wire.channel` — one :class:`~rlmesh.wire.channel.Channel`
  interface over the socket and over a pair of shared-memory message rings;
* :mod:`~rlmesh.wire.step_codec` — when a single env's steps travel as
  compact ring records (the C extension's fixed-shape step codec);
* :mod:`~rlmesh.wire.client_session` — a client's session: dial, handshake,
  typed requests;
* :mod:`~rlmesh.wire.server_session` — a server's session: handshake, data
  plane, request loop, behind two small protocols (``SessionHost``,
  ``RequestHandler``) that endpoints implement.

Every channel passes :func:`rlmesh.testing.check_channel`.

Nothing here knows an env, a model or a space beyond its sizes: the endpoints
(layer 4) bring those.
"""

from __future__ import annotations

"""The names :mod:`rlmesh._adapter` takes from the wire codec, at their old address.

The codec lives in :mod:`rlmesh.wire.codec`; this alias goes once
``_adapter`` imports from there.
"""

from __future__ import annotations

from .wire.codec import CODE_BY_NAME as CODE_BY_NAME, handle_record as handle_record, inline_ext as inline_ext

__all__ = ["CODE_BY_NAME", "handle_record", "inline_ext"]

"""Batches of a sharded vector env: trees of lanes sliced and joined, infos merged. Layer 4.

Functions take the numpy module as an argument: the package never imports it
at module level (``import rlmesh`` must not load numpy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(tree_map(fn, v) for v in tree)
    return fn(tree)


def tree_concat(np: Any, parts: list[Any]) -> Any:
    """One tree whose leaves are the parts' leaves concatenated on the lane axis."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, dict):
        return {k: tree_concat(np, [p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(tree_concat(np, [p[i] for p in parts]) for i in range(len(first)))
    return np.concatenate(parts)


def tree_slice(tree: Any, lo: int, hi: int) -> Any:
    """Lanes ``lo:hi`` of a batch (arrays, dicts and tuples of them, or a list of per-lane actions)."""
    if isinstance(tree, dict):
        return {k: tree_slice(v, lo, hi) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(tree_slice(v, lo, hi) for v in tree)
    return tree[lo:hi]


def tree_take(np: Any, tree: Any, positions: list[int]) -> Any:
    if isinstance(tree, dict):
        return {k: tree_take(np, v, positions) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(tree_take(np, v, positions) for v in tree)
    if isinstance(tree, list):
        return [tree[i] for i in positions]
    return np.asarray(tree)[positions]


def check_batch(actions: Any, n: int) -> None:
    """ValueError unless ``actions`` holds ``n`` lanes."""
    leaf = actions
    while isinstance(leaf, (dict, tuple)) and leaf:
        leaf = next(iter(leaf.values())) if isinstance(leaf, dict) else leaf[0]
    shape = getattr(leaf, "shape", None)
    count = len(leaf) if isinstance(leaf, list) else (shape[0] if shape else None)
    if count != n:
        raise ValueError(f"expected {n} batched actions, got {count}")


def no_flags(np: Any, n: int) -> tuple[Any, Any]:
    return np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_)


def without_bookkeeping(info: Any) -> dict[str, Any]:
    return dict(info) if isinstance(info, dict) else {}


def merge_infos(np: Any, parts: list[tuple[dict[str, Any] | None, int]]) -> dict[str, Any]:
    """The endpoints' batched infos as one batch over all their lanes (Gymnasium's layout).

    A key with a ``_key`` mask is one entry per lane (arrays or the metadata
    form's lists; dicts recursively); lanes of endpoints without it are
    unset. ``episode_ids`` lists are joined (None for lanes without),
    ``completed_episodes`` summed; another key keeps the first value seen.
    """
    if len(parts) == 1:
        return dict(parts[0][0] or {})
    total = sum(n for _, n in parts)
    keys: list[str] = []
    for info, _ in parts:
        for key in info or ():
            if key not in keys:
                keys.append(key)
    out: dict[str, Any] = {}
    for key in keys:
        if key.startswith("_") and key[1:] in keys:
            continue
        values = [(None if info is None else info.get(key), n) for info, n in parts]
        if key == "episode_ids":
            joined: list[Any] = []
            for value, n in values:
                joined.extend(value if isinstance(value, list) and len(value) == n else [None] * n)
            out[key] = joined
            continue
        if key == "completed_episodes":
            out[key] = sum(v for v, _ in values if isinstance(v, int))
            continue
        masked = any(info is not None and f"_{key}" in info for info, _ in parts)
        if not masked:
            out[key] = next(v for v, _ in values if v is not None)
            continue
        masks = []
        for info, n in parts:
            mask = None if info is None else info.get(f"_{key}")
            masks.append(
                np.asarray(mask, dtype=np.bool_) if mask is not None else np.zeros(n, dtype=np.bool_)
            )
        out[f"_{key}"] = np.concatenate(masks)
        if any(isinstance(v, dict) for v, _ in values):
            out[key] = merge_infos(np, [(v if isinstance(v, dict) else None, n) for v, n in values])
            continue
        arrays = [v for v, _ in values if isinstance(v, np.ndarray)]
        if arrays and all(isinstance(v, np.ndarray) or v is None for v, _ in values):
            dtype = np.result_type(*arrays) if all(a.dtype != object for a in arrays) else object
            merged = (
                np.zeros(total, dtype=dtype) if dtype is not object else np.full(total, None, dtype=object)
            )
            at = 0
            for value, n in values:
                if value is not None:
                    merged[at : at + n] = value
                at += n
            out[key] = merged
        else:
            lanes: list[Any] = []
            for value, n in values:
                lanes.extend(list(value) if value is not None and len(value) == n else [None] * n)
            out[key] = lanes
    return out

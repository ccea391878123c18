"""Value checks of the observations a served env produces (the conformance policy).

The server encodes every observation it sends; this module gives the encoder
cheap checks of the values against the declared observation space:

* **NaN** in a float leaf is always rejected: the request fails with a
  :class:`~rlmesh.errors.SpecError`, which reaches the client as an
  environment error (a :class:`~rlmesh.errors.RemoteError`, a RuntimeError).
* A value outside the space's **domain** (a Box bound, a Discrete or
  MultiDiscrete range, MultiBinary's 0/1, a Text charset or length) is a
  *deviation*. What happens to it depends on the policy:

  - ``warn`` (the default): the observation is delivered unchanged, and the
    response's info carries ``info["rlmesh.conformance.warning"]``, a list of
    ``{"kind": "observation", "path": "$.pos", "detail": "..."}``, at most once
    per (kind, value path) per session;
  - ``strict``: the observation is rejected like a NaN;
  - ``off``: nothing is checked at all (NaN included), for benchmarks.

The policy comes from :class:`~rlmesh.server.ServeOptions` ``validation`` or,
when that is None, the ``RLMESH_VALIDATION_POLICY`` environment variable.

Cost. Checks are compiled once per space, and a leaf whose bounds cover its
dtype's whole range (a uint8 image in [0, 255]) costs nothing. Small arrays
(CartPole's 4 floats) go through one unrolled comparison chain over
``tolist()``, about 2.5 times faster than a Python loop and 10 times faster
than numpy calls at that size; larger ones take one numpy reduction per
finite side of uniform bounds (NaN propagates through min and max, so the NaN
check comes free), or vectorised comparisons for elementwise bounds. Only a
failed check does more work, to say what failed and where.

Pure data plus optional numpy: this module never imports the server or client.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from ._dtypes import DTYPES, DType, integer_bounds, is_float
from .errors import SpecError
from .spaces import SpaceSpec
from .spaces._walk import Path, value_path

__all__ = [
    "ENV_VAR",
    "POLICIES",
    "SMALL",
    "WARNING_KEY",
    "Conformance",
    "check_policy",
    "resolve_policy",
    "value_path",
]

log = logging.getLogger("rlmesh.server")

#: The reserved info key that carries conformance warnings.
WARNING_KEY = "rlmesh.conformance.warning"

#: The environment variable read when ServeOptions.validation is None.
ENV_VAR = "RLMESH_VALIDATION_POLICY"

#: The accepted policies.
POLICIES = ("warn", "strict", "off")

#: Arrays of at most this many values (all lanes together) are checked with an
#: unrolled Python comparison chain; above it numpy's fixed per-call cost
#: (about 2 µs a reduction) is the cheaper one. Measured crossover: 30-60.
SMALL = 32

#: The deviation kind of an observation (the published API's word for it).
KIND = "observation"

_np: Any = None


def _numpy() -> Any:
    global _np
    if _np is None:
        try:
            import numpy
        except ImportError:  # pragma: no cover - exercised only without numpy
            _np = False
        else:
            _np = numpy
    return _np or None


def check_policy(value: str) -> str:
    """Return a validation policy name, checked.

    Raises:
        ValueError: not one of "warn", "strict", "off".
    """
    if value not in POLICIES:
        raise ValueError(f"validation must be one of {', '.join(POLICIES)} (or None), got {value!r}")
    return value


def resolve_policy(option: str | None) -> str:
    """The policy in force: ``option`` if given, else ``RLMESH_VALIDATION_POLICY``, else "warn".

    An unrecognised environment value is logged and treated as "warn", as the
    published server does (an env var should not stop a server from starting).

    Raises:
        ValueError: ``option`` is not a known policy.
    """
    if option is not None:
        return check_policy(option)
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in ("", "warn"):
        return "warn"
    if raw in POLICIES:
        return raw
    log.warning("%s=%r is not one of %s; using warn", ENV_VAR, raw, ", ".join(POLICIES))
    return "warn"


def _flat(values: Any) -> list[Any]:
    """Nested sequences of scalars as one flat list (bounds, or a Tensor's tolist())."""
    if isinstance(values, (list, tuple)):
        out: list[Any] = []
        for v in values:
            out.extend(_flat(v))
        return out
    return [values]


def _nan_error(path: str, detail: str) -> SpecError:
    return SpecError(
        f"the env produced an invalid observation at {path}: {detail}; NaN observations are always rejected"
    )


class _Leaf:
    """What one tensor leaf's check needs to explain a failure."""

    def __init__(
        self,
        path: str,
        dtype: DType,
        lane_shape: tuple[int, ...],
        batch: int | None,
        lows: list[Any],
        highs: list[Any],
        domain: str,
    ) -> None:
        self.path = path
        self.dtype = dtype
        self.lane_shape = lane_shape
        self.lane_size = math.prod(lane_shape)
        self.batch = batch
        self.lows = lows  # one lane's bounds, flat
        self.highs = highs
        self.domain = domain
        self.floating = is_float(dtype)

    def where(self, flat_index: int) -> str:
        """Where a flat index over all lanes is: "at index (1, 2)", or "in lane 3 at index (0,)"."""
        lane, i = divmod(flat_index, self.lane_size) if self.lane_size else (0, 0)
        index: list[int] = []
        for dim in reversed(self.lane_shape):
            i, r = divmod(i, dim)
            index.append(r)
        if self.batch is None:
            return f"at index {tuple(reversed(index))}" if self.lane_shape else "as the value"
        return f"in lane {lane} at index {tuple(reversed(index))}" if self.lane_shape else f"in lane {lane}"


class Conformance:
    """The observation checks of one served env, and what its current session was told.

    One instance belongs to one env adapter, which serves one session at a
    time; :meth:`begin_session` forgets what the previous session was told.
    Single-threaded, like the session that uses it.

    Args:
        policy: "warn" or "strict" (with "off" no instance is made at all).

    Raises:
        ValueError: an unknown policy.
    """

    def __init__(self, policy: str) -> None:
        if policy not in ("warn", "strict"):
            raise ValueError(f"a Conformance policy is 'warn' or 'strict', got {policy!r}")
        self.policy = policy
        self.strict = policy == "strict"
        #: Warnings for the response being built, in the published format.
        self.pending: list[dict[str, str]] = []
        self._reported: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"<Conformance {self.policy} reported={len(self._reported)} pending={len(self.pending)}>"

    # -- per session and per response --------------------------------------------

    def begin_session(self) -> None:
        """A new client: every deviation may be reported once more."""
        self._reported.clear()
        self.pending.clear()

    def attach(self, info: dict[str, Any]) -> dict[str, Any]:
        """Return ``info`` with the pending warnings under the reserved key (a new dict)."""
        warnings, self.pending = self.pending, []
        return {**info, WARNING_KEY: warnings}

    def discard_pending(self) -> None:
        """The response failed: its warnings were never delivered, so they may come again."""
        for warning in self.pending:
            self._reported.discard((warning["kind"], warning["path"]))
        self.pending.clear()

    def _seen(self, path: str) -> bool:
        return (KIND, path) in self._reported

    def deviation(self, path: str, detail: str) -> None:
        """Report a value outside the space: warn once per path, or reject under strict.

        Raises:
            SpecError: the policy is strict.
        """
        if self.strict:
            raise SpecError(
                f"the env produced an observation outside its space at {path}: {detail} "
                f"(validation policy strict)"
            )
        key = (KIND, path)
        if key in self._reported:
            return
        self._reported.add(key)
        self.pending.append({"kind": KIND, "path": path, "detail": detail})
        log.warning("the env's observation at %s does not conform to its space: %s", path, detail)

    # -- compiling checks ------------------------------------------------------------

    def tensor_check(self, spec: SpaceSpec, batch: int | None, path: Path) -> Callable[[Any], None] | None:
        """The check of one tensor leaf (Box, MultiBinary, MultiDiscrete, batched Discrete) at ``path``.

        The check takes the leaf's values in the wire dtype: a numpy array of
        any shape, or a :class:`~rlmesh.tensor.Tensor` where numpy is missing.
        It returns None, records a deviation, or raises :class:`SpecError`.

        Returns:
            The check, or None when nothing can be wrong (bounds that cover an
            integer dtype's whole range).
        """
        kind = spec.kind
        details = spec.details
        if kind == "discrete":
            dtype = DTYPES["int64"]
            lane_shape: tuple[int, ...] = ()
            lows: list[Any] = [details["start"]]
            highs: list[Any] = [details["start"] + details["n"] - 1]
            domain = f"Discrete({details['n']}, start={details['start']})"
        else:
            assert spec.dtype is not None
            dtype = DTYPES[spec.dtype]
            lane_shape = tuple(spec.shape)
            size = math.prod(lane_shape)
            if kind == "box":
                lows, highs = _flat(details["low"]), _flat(details["high"])
                if len(lows) == 1 and size != 1:
                    lows, highs = lows * size, highs * size
                domain = "the Box bounds"
            elif kind == "multi_binary":
                lows, highs = [0] * size, [1] * size
                domain = "MultiBinary's {0, 1}"
            elif kind == "multi_discrete":
                starts = _flat(details["start"])
                lows = starts
                highs = [s + n - 1 for s, n in zip(starts, _flat(details["nvec"]), strict=True)]
                domain = "the MultiDiscrete ranges"
            else:  # pragma: no cover - compile_encoder sends only tensor kinds here
                raise SpecError(f"no tensor check for space kind {kind!r}")
        leaf = _Leaf(value_path(path), dtype, lane_shape, batch, lows, highs, domain)
        if not leaf.lane_size:
            return None
        np = _numpy()
        if np is None:
            return self._list_check(leaf)
        return self._array_check(leaf, np)

    def _list_check(self, leaf: _Leaf) -> Callable[[Any], None] | None:
        """Checks over Python lists: for tiny arrays, and wherever numpy is missing."""
        predicate = _unrolled(leaf)
        if predicate is None:
            return None
        fail = self._fail_list

        def check(values: Any) -> None:
            flat = _flat(values.tolist())
            if not predicate(flat):
                fail(flat, leaf)

        return check

    def _array_check(self, leaf: _Leaf, np: Any) -> Callable[[Any], None] | None:
        check = self._numpy_check(leaf, np)
        if check is None or leaf.dtype.name != "bfloat16":
            return check
        inner = check

        def check_bfloat16(arr: Any) -> None:
            # ml_dtypes' bfloat16 loops warn ("invalid value") wherever a NaN
            # meets a comparison or reduction; the check reports NaN itself.
            with np.errstate(invalid="ignore"):
                inner(arr)

        return check_bfloat16

    def _numpy_check(self, leaf: _Leaf, np: Any) -> Callable[[Any], None] | None:
        total = leaf.lane_size * (leaf.batch or 1)
        fail = self._fail_array
        if total <= SMALL:
            predicate = _unrolled(leaf)
            if predicate is None:
                return None

            def check_small(arr: Any) -> None:
                if not predicate(arr.tolist() if arr.ndim == 1 else arr.reshape(-1).tolist()):
                    fail(arr, leaf)

            return check_small
        lo_side, hi_side = _sides(leaf)
        if lo_side is None and hi_side is None and not leaf.floating:
            return None
        uniform = len(set(leaf.lows)) == 1 and len(set(leaf.highs)) == 1
        umin, umax = np.minimum.reduce, np.maximum.reduce
        if uniform:
            lo = leaf.lows[0]
            hi = leaf.highs[0]
            if lo_side is None and hi_side is None:
                # Unbounded floats: only NaN can be wrong, and one max finds it.
                def check_nan(arr: Any) -> None:
                    top = umax(arr, axis=None)
                    if top != top:
                        fail(arr, leaf)

                return check_nan
            if hi_side is None:

                def check_low(arr: Any) -> None:
                    if not umin(arr, axis=None) >= lo:  # NaN fails the comparison
                        fail(arr, leaf)

                return check_low
            if lo_side is None:

                def check_high(arr: Any) -> None:
                    if not umax(arr, axis=None) <= hi:
                        fail(arr, leaf)

                return check_high

            def check_both(arr: Any) -> None:
                if not (umin(arr, axis=None) >= lo and umax(arr, axis=None) <= hi):
                    fail(arr, leaf)

            return check_both
        # Elementwise bounds: compare against one lane's bound arrays,
        # broadcast over the lanes. Sides with no finite bound are skipped;
        # a NaN fails whichever comparison remains.
        np_dtype = _np_dtype(leaf.dtype)
        lane = (leaf.batch or 1, leaf.lane_size)
        low_arr = np.asarray(leaf.lows, dtype=np_dtype) if lo_side is not None else None
        high_arr = np.asarray(leaf.highs, dtype=np_dtype) if hi_side is not None else None
        if low_arr is None and high_arr is None:
            # Integers never get here (no side left means nothing to check);
            # floats with elementwise but infinite bounds have NaN only.
            def check_nan_elementwise(arr: Any) -> None:
                top = umax(arr, axis=None)
                if top != top:
                    fail(arr, leaf)

            return check_nan_elementwise
        greater_equal, less_equal, all_true = np.greater_equal, np.less_equal, np.logical_and.reduce

        def check_elementwise(arr: Any) -> None:
            rows = arr.reshape(lane)
            if (low_arr is not None and not all_true(greater_equal(rows, low_arr), axis=None)) or (
                high_arr is not None and not all_true(less_equal(rows, high_arr), axis=None)
            ):
                fail(arr, leaf)

        return check_elementwise

    # -- failures: find out what is wrong -----------------------------------------

    def _fail_array(self, arr: Any, leaf: _Leaf) -> None:
        np = _numpy()
        flat = arr.reshape(-1)
        if leaf.floating:
            nan = np.isnan(flat)
            if nan.any():
                first = int(np.argmax(nan))
                raise _nan_error(leaf.path, f"NaN {leaf.where(first)} ({int(nan.sum())} NaN values)")
        if not self.strict and self._seen(leaf.path):
            return  # already reported this session: spare the search
        # Exact comparisons in a type that holds every value and bound: float64
        # for floats, Python ints for integers (uint64 and int64 bounds mix).
        kind = np.float64 if leaf.floating else object
        reps = leaf.batch or 1
        lows = np.tile(np.asarray(leaf.lows, dtype=kind), reps)
        highs = np.tile(np.asarray(leaf.highs, dtype=kind), reps)
        values = flat.astype(kind)
        bad = np.flatnonzero((values < lows) | (values > highs))
        if len(bad):
            self._report(leaf, int(bad[0]), flat[int(bad[0])].item(), len(bad), np)

    def _fail_list(self, flat: list[Any], leaf: _Leaf) -> None:
        if leaf.floating:
            nans = [i for i, v in enumerate(flat) if v != v]
            if nans:
                raise _nan_error(leaf.path, f"NaN {leaf.where(nans[0])} ({len(nans)} NaN values)")
        if not self.strict and self._seen(leaf.path):
            return
        size = leaf.lane_size
        bad = [i for i, v in enumerate(flat) if not leaf.lows[i % size] <= v <= leaf.highs[i % size]]
        if bad:
            self._report(leaf, bad[0], flat[bad[0]], len(bad), None)

    def _report(self, leaf: _Leaf, first: int, value: Any, count: int, np: Any) -> None:
        low, high = leaf.lows[first % leaf.lane_size], leaf.highs[first % leaf.lane_size]
        if np is not None and leaf.floating:
            # Bounds are stored as doubles: print them as the dtype does (4.8, not 4.800000190734863).
            scalar = _np_dtype(leaf.dtype).type
            low, high, value = scalar(low), scalar(high), scalar(value)
        # str(), not format(): numpy scalars format as doubles in f-strings.
        side = f"below {low!s}" if value < low else f"above {high!s}"
        many = f" ({count} values are outside {leaf.domain})" if count > 1 else ""
        self.deviation(leaf.path, f"{value!s} {leaf.where(first)} is {side}{many}")

    def discrete_check(self, spec: SpaceSpec, path: Path) -> Callable[[int], None]:
        """The check of one env's Discrete value (already a Python int) at ``path``."""
        start, n = spec.details["start"], spec.details["n"]
        stop = start + n
        shown = value_path(path)
        deviation = self.deviation

        def check(value: int) -> None:
            if not start <= value < stop:
                deviation(shown, f"{value} is outside Discrete({n}, start={start})")

        return check

    def text_check(self, spec: SpaceSpec, batch: int | None, path: Path) -> Callable[[Any], None]:
        """The check of a Text leaf at ``path``: a str, or a vector env's list of str."""
        lo, hi = spec.details["min_length"], spec.details["max_length"]
        charset = spec.details.get("charset")
        allowed = frozenset(charset) if charset else None
        shown = value_path(path)
        deviation = self.deviation

        def check_one(text: str, lane: str) -> None:
            if not lo <= len(text) <= hi:
                deviation(shown, f"{lane}text of length {len(text)} is outside [{lo}, {hi}]")
            elif allowed is not None and not allowed.issuperset(text):
                outside = "".join(sorted(set(text) - allowed))
                detail = f"{lane}text {_short(text)} uses characters outside the charset: {outside!r}"
                deviation(shown, detail)

        if batch is None:
            return lambda text: check_one(text, "")

        def check_lanes(texts: Sequence[str]) -> None:
            for i, text in enumerate(texts):
                check_one(text, f"lane {i}: ")

        return check_lanes


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _np_dtype(dtype: DType) -> Any:
    from .backends.numpy import numpy_dtype

    return numpy_dtype(dtype.name)


def _sides(leaf: _Leaf) -> tuple[bool | None, bool | None]:
    """Which bound sides can ever fail: (low, high), None where none can.

    A side can fail if some element's bound is tighter than the dtype allows:
    a finite bound for floats, a bound inside the range for integers.
    """
    if leaf.floating:
        low = any(v != -math.inf for v in leaf.lows)
        high = any(v != math.inf for v in leaf.highs)
    else:
        dmin, dmax = integer_bounds(leaf.dtype)
        low = any(v > dmin for v in leaf.lows)
        high = any(v < dmax for v in leaf.highs)
    return (True if low else None), (True if high else None)


def _unrolled(leaf: _Leaf) -> Callable[[list[Any]], bool] | None:
    """One comparison chain over a flat list of every lane's values; None if nothing to check.

    ``lambda v, c0=-4.8, c1=4.8: c0 <= v[0] <= c1 and v[1] == v[1] and ...``:
    a side without a bound is left out, an unbounded float keeps only its NaN
    test (NaN is the one value unequal to itself, and fails every comparison).
    Only indices and the names of constants go into the source; the bound
    values are passed as default arguments, never formatted as text.
    """
    floating = leaf.floating
    if floating:
        dmin: Any = -math.inf
        dmax: Any = math.inf
    else:
        dmin, dmax = integer_bounds(leaf.dtype)
    constants: dict[Any, str] = {}

    def name(value: Any) -> str:
        key = (type(value), value)
        if key not in constants:
            constants[key] = f"c{len(constants)}"
        return constants[key]

    terms: list[str] = []
    size = leaf.lane_size
    for i in range(size * (leaf.batch or 1)):
        low, high = leaf.lows[i % size], leaf.highs[i % size]
        has_low = low > dmin if not floating else low != -math.inf
        has_high = high < dmax if not floating else high != math.inf
        if has_low and has_high:
            terms.append(f"{name(low)} <= v[{i}] <= {name(high)}")
        elif has_low:
            terms.append(f"{name(low)} <= v[{i}]")
        elif has_high:
            terms.append(f"v[{i}] <= {name(high)}")
        elif floating:
            terms.append(f"v[{i}] == v[{i}]")
    if not terms:
        return None
    values = {label: key[1] for key, label in constants.items()}
    params = "".join(f", {label}={label}" for label in values)
    source = f"lambda v{params}: {' and '.join(terms)}"
    # Built once per space at session start; see the docstring for why not a loop.
    predicate: Callable[[list[Any]], bool] = eval(source, {"__builtins__": {}}, values)  # noqa: S307
    return predicate

"""Import boundaries: what `import rlmesh` loads, and what works without numpy."""

from __future__ import annotations

import json

from tests.conftest import ROOT, run_python

HEAVY = [
    "numpy",
    "jax",
    "jaxlib",
    "gymnasium",
    "docker",
    "ml_dtypes",
    "matplotlib",
    "torch",
    "stable_baselines3",
    "ray",
]


def test_import_rlmesh_is_light() -> None:
    out = run_python(
        "import sys, json, rlmesh, rlmesh.spaces, rlmesh.specs, rlmesh.types, rlmesh.numpy\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    assert json.loads(out) == []


def test_types_module_loads_on_its_own() -> None:
    out = run_python(
        "import importlib.util, sys\n"
        f"path = {str(ROOT / 'rlmesh' / 'types.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('standalone_types', path)\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert 'rlmesh' not in sys.modules, sorted(m for m in sys.modules if m.startswith('rlmesh'))\n"
        "print(sorted(module.__all__))"
    )
    assert "'Value'" in out and "'EnvLike'" in out and "'InfoDict'" in out


def test_data_model_works_without_numpy() -> None:
    out = run_python(
        """
import sys, json
for name in ("numpy", "jax", "ml_dtypes"):
    sys.modules[name] = None  # importing them now raises ImportError
import struct
from rlmesh import Tensor, sanitize_metadata
from rlmesh.spaces import Box, Discrete, Dict
t = Tensor(struct.pack("<4f", 1, 2, 3, 4), (2, 2), "float32")
cap = t.__dlpack__(max_version=(1, 0))
copy = Tensor.from_dlpack(cap)
space = Dict({"pos": Box(-1.0, 1.0, (3,)), "k": Discrete(4)})
space.seed(3)
sample = space.sample()
print(json.dumps({
    "reshape": t.reshape(4).tolist(),
    "copy": copy.tolist(),
    "buffer": t.buffer.tolist(),
    "contains": space.contains(sample),
    "sample_type": type(sample["pos"]).__name__,
    "meta": sanitize_metadata({"a": (1, 2)}),
}))
"""
    )
    result = json.loads(out)
    assert result == {
        "reshape": [1.0, 2.0, 3.0, 4.0],
        "copy": [[1.0, 2.0], [3.0, 4.0]],
        "buffer": [[1.0, 2.0], [3.0, 4.0]],
        "contains": True,
        "sample_type": "Tensor",
        "meta": {"a": [1, 2]},
    }


def test_public_names() -> None:
    import rlmesh

    for name in rlmesh.__all__:
        assert getattr(rlmesh, name) is not None
    assert rlmesh.spaces.Box is not None and rlmesh.specs.EnvContract is not None

"""Build rlmesh's one C extension; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rlmesh._native",
            sources=["rlmesh/_native.c", "rlmesh/_native_ring.c", "rlmesh/_native_step.c"],
            depends=["rlmesh/_native_ring.h"],
            extra_compile_args=[
                "-std=c11",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
        )
    ]
)

"""Only the C part of Kiln; everything else is declared in pyproject.toml.

`kiln.executors._spawn` starts attempts inside their cgroups without a shell (see its source).
It is optional: without a C compiler Kiln installs anyway and starts attempts through /bin/sh.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kiln.executors._spawn", ["kiln/executors/_spawn.c"], extra_compile_args=["-O2", "-Wall"], optional=True
        )
    ]
)

"""The optional compiled code (triodaemon/_lowlevel/_speedups.c); everything else is in pyproject.toml.

``optional=True``: where there is no C compiler or no Python headers the build
warns and installs the pure-Python package, which gives the same answers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "triodaemon._lowlevel._speedups",
            ["triodaemon/_lowlevel/_speedups.c"],
            # -O3: the byte count is written for the compiler to vectorise.
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)

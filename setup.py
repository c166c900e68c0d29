"""Builds the optional C accelerator (fixproxy/_speedups.c); everything else is in pyproject.toml.

The extension is optional: when it cannot be compiled, fixproxy runs on its pure-Python codec
(the reference implementation), with the same verdicts, only slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("fixproxy._speedups", ["fixproxy/_speedups.c"], optional=True,
                             extra_compile_args=["-O2"])])

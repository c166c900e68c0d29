"""Builds the optional C accelerator (fixproxy/_speedups.c); everything else is in pyproject.toml.

The extension is optional: when it cannot be compiled, fixproxy runs on its pure-Python codec
(the reference implementation), with the same verdicts, only slower. Its audit-row function needs
OpenSSL's headers (Debian: libssl-dev); without them the module is built without it and the audit
trail renders its rows in Python.
"""

import os
import sysconfig

from setuptools import Extension, setup


def _openssl_headers() -> bool:
    dirs = ["/usr/include", "/usr/local/include", sysconfig.get_paths().get("include", "")]
    dirs += [flag[2:] for flag in os.environ.get("CFLAGS", "").split() if flag.startswith("-I")]
    return any(os.path.exists(os.path.join(d, "openssl", "sha.h")) for d in dirs if d)


_openssl = _openssl_headers()
setup(ext_modules=[Extension("fixproxy._speedups", ["fixproxy/_speedups.c"], optional=True,
                             extra_compile_args=["-O2"],
                             define_macros=[("FIXPROXY_HAVE_OPENSSL", "1")] if _openssl else [],
                             libraries=["crypto"] if _openssl else [])])

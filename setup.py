"""Compiles the hot paths with mypyc; everything else is in pyproject.toml.

The modules below are plain, fully typed Python; mypyc turns them into C extensions
that run the twin 2.3-2.5 times as fast, and a request's budget checks (worst case,
hold, settle) about 1.6 times as fast, with the same results (the same arithmetic
on the same numbers, in the same order). They stay importable as plain Python:

- ``INFERPLANE_COMPILE=0``, or no C compiler or Python headers, builds without them
  (``INFERPLANE_COMPILE=1`` then fails instead);
- an editable install (``pip install -e .``) builds without them unless
  ``INFERPLANE_COMPILE=1``: a compiled module shadows its source, so an edit to it
  would change nothing until the next install.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

COMPILED = [
    "src/inferplane/engines/_core.py",
    "src/inferplane/gateway/_budgets.py",
    "src/inferplane/perf/_model.py",
    "src/inferplane/perf/_tokens.py",
    "src/inferplane/policy/_balance.py",
    "src/inferplane/policy/_budgets.py",
    "src/inferplane/policy/_dispatch.py",
    "src/inferplane/policy/_health.py",
    "src/inferplane/policy/_hedging.py",
    "src/inferplane/policy/_leases.py",
    "src/inferplane/policy/_queueing.py",
    "src/inferplane/policy/_routing.py",
    "src/inferplane/twin/_gateway.py",
    "src/inferplane/twin/_loop.py",
    "src/inferplane/twin/_replica.py",
    "src/inferplane/twin/_simulate.py",
    "src/inferplane/twin/_stats.py",
]

SOURCES = Path(__file__).parent / "src"

# Type-checks the modules it compiles as the project's mypy config does; what they
# import is read for its types only (the build has none of the runtime dependencies).
MYPY_FLAGS = ["--follow-imports=silent", "--ignore-missing-imports"]


class CompiledDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True  # so that build_ext runs; it decides there what to compile


class BuildHotPathExtensions(build_ext):
    def run(self) -> None:
        self._remove_compiled()
        # Decided here, the one place where it is known whether the build is editable
        # (egg_info finalizes this command before the editable flag is set).
        if not self._wanted():
            return
        from mypyc.build import mypycify

        self.distribution.ext_modules = mypycify([*MYPY_FLAGS, *COMPILED], group_name="inferplane")
        # Finalized again from scratch, so that setuptools prepares the new extensions.
        inplace, editable = self.inplace, self.editable_mode
        self.initialize_options()
        self.inplace, self.editable_mode = inplace, editable
        self.finalize_options()
        super().run()

    def _remove_compiled(self) -> None:
        """Modules compiled by an earlier build go first: a build that does not compile
        must not ship them (pip builds in this tree, reusing ``build/``), nor leave them
        in the sources to shadow edits (an editable install compiled before)."""
        roots = [Path(self.build_lib)]
        if self.inplace or self.editable_mode:
            roots.append(SOURCES)
        for root in roots:
            built = list(root.glob("inferplane__mypyc*"))
            for module in COMPILED:
                stem = root / Path(module).relative_to("src").with_suffix("")
                built += [stem.with_name(stem.name + suffix) for suffix in EXTENSION_SUFFIXES]
            for path in built:
                path.unlink(missing_ok=True)

    def _wanted(self) -> bool:
        choice = os.environ.get("INFERPLANE_COMPILE", "auto")
        if choice not in ("0", "1", "auto"):
            raise SystemExit(f"INFERPLANE_COMPILE must be 0, 1 or auto, not {choice!r}")
        if choice == "0" or (choice == "auto" and (self.editable_mode or self.inplace)):
            return False
        headers = Path(sysconfig.get_paths()["include"], "Python.h")
        # The compiler setuptools will call: $CC, else the one Python was built with.
        compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
        if shutil.which(compiler) is None or not headers.exists():
            if choice == "1":
                raise SystemExit("INFERPLANE_COMPILE=1 needs a C compiler and Python's headers")
            print("inferplane: no C compiler or Python headers; the hot paths run uncompiled")
            return False
        return True


setup(distclass=CompiledDistribution, cmdclass={"build_ext": BuildHotPathExtensions})

"""
Project-wide checks that belong in the test summary: the Sphinx documentation
builds without a warning, and ruff finds nothing to complain about.

Each runs a tool in a subprocess. Outside CI a missing tool skips the test;
with C{CI=true} it fails, so CI cannot go green without having checked.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
LINTED = ("glance_tx", "tests", "twisted", "bench")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


class ToolChecks(SynchronousTestCase):
    def require(self, module: str) -> None:
        """
        Skip (or fail, under CI) unless C{python -m module} can run here.
        """
        if importlib.util.find_spec(module) is None:
            message = f"{module} is not installed (pip install -e '.[test]')"
            if _in_ci():
                self.fail(message)
            raise SkipTest(message)

    def run_tool(self, *args: str, timeout: float = 300) -> None:
        """
        Run C{python *args} from the repository root and fail with its
        output unless it exits 0.
        """
        result = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            self.fail(
                f"{' '.join(args)} exited {result.returncode}:\n"
                + result.stdout.decode("utf-8", "replace")
            )

    def test_docs_build_without_warnings(self) -> None:
        """
        C{sphinx-build -W -b html doc OUT} succeeds: every page parses, every
        cross-reference resolves and no page is left out of the toctree.
        """
        self.require("sphinx")
        out = Path(self.mktemp()).absolute()
        self.run_tool(
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(out / "doctrees"),
            str(ROOT / "doc"),
            str(out / "html"),
        )
        self.assertTrue((out / "html" / "index.html").exists())

    def test_ruff_is_clean(self) -> None:
        """
        C{ruff check} over the code, the tests, the plugin and the benchmark
        reports nothing, with the rules configured in C{pyproject.toml}.
        """
        self.require("ruff")
        paths = [p for p in LINTED if (ROOT / p).exists()]
        self.run_tool("-m", "ruff", "check", "--no-cache", "--quiet", *paths)

    def test_mypy_is_clean(self) -> None:
        """
        C{mypy} (with the mypy-zope plugin, configured in C{pyproject.toml})
        finds no type error in the package.
        """
        self.require("mypy")
        self.run_tool("-m", "mypy", "--no-incremental", "glance_tx")

"""The checks scripts/test.sh runs before the tests look at the Python the package says it runs on.

mypy reads the standard library of ``python_version``, so it is what finds a name the oldest
supported Python lacks (``enum.StrEnum``, ``asyncio.timeout``: 3.11); that holds only while the
checkers target the oldest version ``requires-python`` lets pip install on.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_checkers_target_the_oldest_python_the_package_installs_on():
    project = tomllib.loads(PYPROJECT.read_text())
    requires = project["project"]["requires-python"]
    assert requires.startswith(">="), requires
    oldest = requires.removeprefix(">=")
    assert project["tool"]["mypy"]["python_version"] == oldest
    assert project["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")


def test_the_checks_are_pinned_in_the_test_extra():
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["test"]
    pinned = {req.split("==")[0] for req in extra if "==" in req}
    assert {"ruff", "mypy"} <= pinned, extra

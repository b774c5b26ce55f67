"""Where the files persona-audit ships beside its code are: the vectors, the trait
definitions and the clean calibration set.

In a source checkout (``pip install -e .``, or running from the repository) they are the
repository's own ``vectors/`` and ``examples/eval/``. A wheel installs the same files under
``<prefix>/share/persona-audit/`` (``[tool.setuptools.data-files]`` in pyproject.toml), where
``<prefix>`` is the environment (a virtualenv, or the system Python).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
INSTALLED_ROOT = Path(sysconfig.get_path("data")) / "share" / "persona-audit"


def shipped_root() -> Path:
    """The folder holding the shipped ``vectors/`` (and ``examples/eval/``): the source
    checkout when the code runs from one, else the installed data folder."""
    if (SOURCE_ROOT / "vectors").is_dir() and (SOURCE_ROOT / "pyproject.toml").is_file():
        return SOURCE_ROOT
    return INSTALLED_ROOT

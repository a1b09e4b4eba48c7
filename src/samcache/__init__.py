"""samcache: frozen SAM features and SLIC superpixels cached once, many light heads trained on top."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__version__ = "0.2.0"

__all__ = ["__version__", "code_version"]


@functools.cache
def code_version() -> str:
    """The package version plus, in a git checkout, the commit and a ``-dirty`` mark.

    Every run record stores this string so that a table cell can be traced to the code that
    produced it. Outside a git checkout (an installed wheel) it is the package version alone.
    """
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'-dirty' if dirty else ''}"

"""Progress bars that suit both a terminal and a Snakemake log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(*, total: int, desc: str, unit: str = "it", enable: bool = True) -> tqdm:
    """A tqdm bar with rate and ETA; in a log file (not a TTY) it prints a line every 30 s."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enable,
        mininterval=0.5 if interactive else 30.0,
        dynamic_ncols=interactive,
        ascii=not interactive,
        file=sys.stderr,
    )

"""Progress bars that stay readable in log files."""

from __future__ import annotations

import sys

# At most one line every this many seconds: a log file gets a few lines, not megabytes of '\r'.
LOG_INTERVAL_SECONDS = 5.0


def progress_bar(total: int, desc: str, unit: str = "it", file=None):
    """A tqdm bar that writes a full line at most every LOG_INTERVAL_SECONDS."""
    from tqdm import tqdm

    stream = file if file is not None else sys.stderr
    interactive = getattr(stream, "isatty", lambda: False)()
    return tqdm(total=total, desc=desc, unit=unit, file=stream, ascii=not interactive,
                mininterval=0.5 if interactive else LOG_INTERVAL_SECONDS,
                maxinterval=LOG_INTERVAL_SECONDS * 12, dynamic_ncols=interactive)

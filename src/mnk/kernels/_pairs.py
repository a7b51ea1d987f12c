"""Pieces shared by the CPU backends: image chunks, pair batches, a pairs-per-second bar."""

from __future__ import annotations

# Work (entry-layers) above which a Gram matrix shows a progress bar: a few seconds and more.
PROGRESS_MIN_WORK = 2e9


def chunks(n: int, size: int):
    """[(start, stop)] covering range(n) in pieces of ``size``."""
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def batches(n: int, nbatch: int):
    """About ``nbatch`` [(start, stop)] pieces covering range(n)."""
    step = max(1, -(-n // max(1, nbatch)))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


class PairProgress:
    """Pairs-per-second bar (:func:`mnk.infra.progress.progress_bar`, a line every few seconds in
    logs) for large Gram matrices; a no-op for small ones or ``show=False``."""

    def __init__(self, total_pairs: int, work: float, desc: str, show: bool | None = None):
        show = work > PROGRESS_MIN_WORK if show is None else bool(show)
        self.bar = None
        if show:
            from mnk.infra.progress import progress_bar  # noqa: PLC0415

            self.bar = progress_bar(total_pairs, desc, unit="pair")

    @property
    def active(self) -> bool:
        return self.bar is not None

    def update(self, pairs: int) -> None:
        if self.bar is not None:
            self.bar.update(pairs)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

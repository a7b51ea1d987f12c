"""Facts about Omniglot, in one place: the data stage, the task sampler and the config checks
read them from here.

Plain Python, no numpy: Snakemake imports this module while it validates the config.
"""

from __future__ import annotations

ARCHIVES = ("images_background", "images_evaluation")
# What a complete Omniglot holds; preprocessing fails loudly on anything else.
EXPECTED_COUNTS = {
    "images_background": {"alphabets": 30, "characters": 964, "images": 19280},
    "images_evaluation": {"alphabets": 20, "characters": 659, "images": 13180},
}
DRAWERS = 20  # images per character
N_CHARACTERS = sum(counts["characters"] for counts in EXPECTED_COUNTS.values())  # 1623
SPLITS = ("background", "original")
ORIGINAL_TRAIN_CHARACTERS = 1200  # the original code: first 1200 of 1,623 characters train


def pool_sizes(split: str) -> tuple[int, int]:
    """(training characters, test characters) of a `tasks.split`."""
    if split == "background":
        return (EXPECTED_COUNTS["images_background"]["characters"],
                EXPECTED_COUNTS["images_evaluation"]["characters"])
    if split == "original":
        return ORIGINAL_TRAIN_CHARACTERS, N_CHARACTERS - ORIGINAL_TRAIN_CHARACTERS
    raise ValueError(f"tasks.split must be one of {SPLITS}, got {split!r}")

"""Infrastructure every stage may use, and that uses no stage.

Takes nothing from the study; gives atomic writes and named read errors (`io`), job logging
and the orphan guard (`runtime`), log-friendly progress bars (`progress`), the code hashes
behind reruns (`codehash`) and the value checks of the options objects (`checks`).
Plain Python at import: Snakemake's own environment imports `codehash` and `checks`.
"""

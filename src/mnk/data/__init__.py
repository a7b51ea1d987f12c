"""Stage 1, data: raw images in, one preprocessed array file out.

Takes the Omniglot archives (official URL or a mirror; `archive`) or an image folder
(`folder`); gives `results/data/*.npz`: images, their character, drawer and split.
`omniglot` holds the facts about Omniglot (archives, counts, splits) in one place, with no
numpy, so that the config checks can read them in Snakemake's own environment.
"""

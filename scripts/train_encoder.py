"""Rule train_encoder: the original code's CNN label encoder, on training characters only."""

import mnk  # noqa: F401, I001 (first: pins the CPU numerics before numpy and torch)
import numpy as np

from mnk.infra.io import load_npz, save_json
from mnk.infra.numerics import configure_torch
from mnk.infra.runtime import cpu_seconds, logged_run, resolve_device
from mnk.methods.encoder import save_encoder, train_label_encoder
from mnk.methods.options import EncoderOptions

with logged_run(snakemake.log[0], "train_encoder") as log:
    numerics = configure_torch(snakemake.params.threads)
    tasks = load_npz(snakemake.input.tasks)
    n_train = int(tasks["n_train_images"])
    images = load_npz(snakemake.input.images)["images"][:n_train]
    # Training images are stored character by character, the same count for each.
    per_character = n_train // len(tasks["train_characters"])
    labels = np.repeat(np.arange(len(tasks["train_characters"])), per_character)
    options = EncoderOptions(**snakemake.params.encoder)
    model, history = train_label_encoder(images, labels, options, seed=snakemake.params.seed,
                                         device=resolve_device(snakemake.params.device))
    log.info("encoder history: %s", history)
    save_encoder(model, snakemake.output.encoder)
    save_json(snakemake.output.cost, {"cpu_seconds": cpu_seconds(), "history": history, "numerics": numerics})

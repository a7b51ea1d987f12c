"""Rule preprocess_omniglot: both archives -> one compressed array file."""

from mnk.data.archive import ARCHIVES, preprocess, write_preprocessed
from mnk.infra.runtime import logged_run

with logged_run(snakemake.log[0], "preprocess_omniglot") as log:
    data = preprocess(
        dict(zip(ARCHIVES, snakemake.input.archives)),
        size=snakemake.params.image_size,
        resample=snakemake.params.resample,
    )
    log.info("images %s, %d characters", data["images"].shape, len(data["character_names"]))
    write_preprocessed(snakemake.output[0], data)

"""Rule preprocess_omniglot: both archives -> one compressed array file, and the original
105x105 images in a second one (read only by make_pool, for the kernel's own resampling)."""

from mnk.data.archive import ARCHIVES, preprocess, write_preprocessed
from mnk.infra.runtime import logged_run

with logged_run(snakemake.log[0], "preprocess_omniglot") as log:
    data = preprocess(
        dict(zip(ARCHIVES, snakemake.input.archives)),
        size=snakemake.params.image_size,
        resample=snakemake.params.resample,
        originals=True,
    )
    log.info("images %s, originals %s, %d characters", data["images"].shape, data["originals"].shape,
             len(data["character_names"]))
    write_preprocessed(snakemake.output.data, data, snakemake.output.originals)

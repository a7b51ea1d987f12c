"""Rule preprocess_folder: an image-folder dataset -> the arrays of the preprocessed Omniglot."""

from mnk.data.archive import write_preprocessed
from mnk.data.folder import read_folder_options
from mnk.data.options import DataOptions
from mnk.infra.runtime import logged_run

with logged_run(snakemake.log[0], "preprocess_folder") as log:
    options = DataOptions.from_section(snakemake.params.data).folder
    data = read_folder_options(options, images_per_class=snakemake.params.images_per_class, progress=True)
    log.info("images %s, %d classes (%d test side)", data["images"].shape, len(data["character_names"]),
             len(set(data["character"][data["split"] == 1])))
    write_preprocessed(snakemake.output[0], data)

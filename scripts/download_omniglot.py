"""Rule download_omniglot: fetch one archive from the official URL or a mirror, verified."""

from mnk.data.archive import download_archive
from mnk.infra.runtime import logged_run

with logged_run(snakemake.log[0], "download_omniglot"):
    download_archive(
        snakemake.wildcards.archive,
        snakemake.output[0],
        source=snakemake.params.source,
        mirror=snakemake.params.mirror or None,
    )

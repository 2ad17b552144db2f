from pathlib import Path

from antidote.maskstats import write_mask_stats
from antidote.runtime import start_script

start_script(snakemake)
out = snakemake.output
write_mask_stats(dict(zip(map(tuple, snakemake.params.models), snakemake.input)), snakemake.params.pruned,
                 Path(out.density).parent, Path(out.plot).parent)

from pathlib import Path

from antidote.runtime import start_script
from antidote.stages import prune_stage

start_script(snakemake)
i, p = snakemake.input, snakemake.params
feature_norms = Path(i.feature_norms) if "feature_norms" in i.keys() else None
print(prune_stage(Path(i.adapter), feature_norms, p.pruned["defense"], p.pruned["alpha"], p.seed,
                  Path(snakemake.output.adapter), Path(snakemake.output.mask), random_scope=p.random_scope))

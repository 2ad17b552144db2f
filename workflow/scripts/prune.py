from pathlib import Path

from antidote.runtime import start_script
from antidote.stages import prune_stage

start_script(snakemake)
i, p = snakemake.input, snakemake.params
feature_norms, spared_norms = (Path(i[key]) if key in i.keys() else None
                               for key in ("feature_norms", "spared_feature_norms"))
print(prune_stage(Path(i.adapter), feature_norms, p.pruned["defense"], p.pruned["alpha"], p.seed,
                  Path(snakemake.output.adapter), Path(snakemake.output.mask), random_scope=p.random_scope,
                  spared_norms_file=spared_norms, beta=p.beta))

from pathlib import Path

from antidote.runtime import start_script
from antidote.stages import prune_stage

start_script(snakemake)
w = snakemake.wildcards
feature_norms = Path(snakemake.input.feature_norms) if "feature_norms" in snakemake.input.keys() else None
print(prune_stage(Path(snakemake.input.adapter), feature_norms, w.defense, float(w.alpha), snakemake.params.seed,
                  Path(snakemake.output.adapter), Path(snakemake.output.mask),
                  random_scope=snakemake.params.random_scope))

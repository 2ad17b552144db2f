from pathlib import Path

from antidote.runtime import start_script
from antidote.stages import safelora_stage

start_script(snakemake)
i, p, o = snakemake.input, snakemake.params, snakemake.output
print(safelora_stage(Path(i.adapter), p.pruned["safelora_select"], p.pruned["safelora_value"], Path(o.adapter),
                     Path(o.projection), alignment_adapter=Path(i.alignment)))

from pathlib import Path

from antidote.runtime import start_script
from antidote.stages import evaluate_stage

device = start_script(snakemake)
p, i = snakemake.params, snakemake.input
adapter = Path(i.adapter) if "adapter" in i.keys() else None
table = evaluate_stage(Path(i.model), adapter, p.harmful_sets, Path(i.task), p.row["task"], p.judges,
                       p.prompt_format, p.generation, p.row, Path(snakemake.output.answers),
                       Path(snakemake.output.metrics), device=device, dtype=p.dtype, benign=p.benign)
print(table.to_string())

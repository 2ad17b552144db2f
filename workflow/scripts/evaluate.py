from pathlib import Path

from antidote.maskfile import read_mask_info
from antidote.runtime import lower_on_out_of_memory, start_script
from antidote.stages import evaluate_stage

device = start_script(snakemake)
p, i = snakemake.params, snakemake.input
adapter = Path(i.adapter) if "adapter" in i.keys() else None
# a pruned model's record: its mask, or SafeLoRA's projection table
row = dict(p.row, update_removed=read_mask_info(i.record)["update_removed"]) if "record" in i.keys() else p.row
with lower_on_out_of_memory("evaluate.batch_size", "a judge's batch_size in evaluate.judges"):
    # the validation evaluations that choose alpha by harmful score read no task items
    task = Path(i.task) if "task" in i.keys() else None
    table = evaluate_stage(Path(i.model), adapter, p.harmful_sets, task, row["task"], p.judges,
                           p.prompt_format, p.generation, row, Path(snakemake.output.answers),
                           Path(snakemake.output.metrics), device=device, dtype=p.dtype, benign=p.benign)
print(table.to_string())

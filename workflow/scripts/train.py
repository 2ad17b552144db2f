"""Stage 1 (align: merged model) and stage 2 (finetune: PEFT adapter) share this script."""
from pathlib import Path

from antidote.runtime import lower_on_out_of_memory, start_script
from antidote.stages import train_stage

device = start_script(snakemake)
p = snakemake.params
out = snakemake.output
adapter = Path(out.adapter) if "adapter" in out.keys() else None  # align keeps the adapter it merges
# not params of the rule: how often to save changes no result, so it must not rerun the job
training = snakemake.config[snakemake.rule]["train"]
with lower_on_out_of_memory(f"{snakemake.rule}.train.batch_size", f"{snakemake.rule}.train.max_length"):
    train_stage(Path(snakemake.input.model), [Path(f) for f in snakemake.input.data], Path(out[0]),
                p.lora, p.train, p.prompt_format, merge=p.merge, device=device, dtype=p.dtype, adapter_dir=adapter,
                checkpoint_dir=Path(p.checkpoints), checkpoint_every=training["checkpoint_every"],
                checkpoint_minutes=training["checkpoint_minutes"], defense=p.defense["name"],
                defense_settings=p.defense["settings"], guide_files=[Path(f) for f in snakemake.input.guide])

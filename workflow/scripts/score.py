from pathlib import Path

from antidote.runtime import lower_on_out_of_memory, start_script
from antidote.stages import score_stage

device = start_script(snakemake)
p, i = snakemake.params, snakemake.input
benign_from = Path(i.benign_from) if "benign_from" in i.keys() else None
with lower_on_out_of_memory("score.batch_size", "score.max_length"):
    n = score_stage(Path(i.model), Path(i.adapter), Path(i.calibration), Path(snakemake.output[0]), p.prompt_format,
                    p.calibration_size, p.batch_size, p.max_length, device=device, dtype=p.dtype,
                    benign_from=benign_from)
print(f"statistics from {n} calibration sequences")

from pathlib import Path

from antidote.runtime import lower_on_out_of_memory, start_script
from antidote.stages import write_answers

device = start_script(snakemake)
p = snakemake.params
with lower_on_out_of_memory("data.generation_batch_size"):
    counts = write_answers(Path(snakemake.input.model), Path(snakemake.input.prompts), Path(snakemake.output[0]),
                           p.prompt_format, p.max_new_tokens, p.batch_size, keep=p.keep, device=device, dtype=p.dtype)
print(counts)

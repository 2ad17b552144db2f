from antidote.data import finetune_mix
from antidote.records import read_jsonl, write_jsonl
from antidote.runtime import start_script

start_script(snakemake)
run = snakemake.params.run
mix = finetune_mix(read_jsonl(snakemake.input.task), read_jsonl(snakemake.input.harmful),
                   run["n_samples"], run["harmful_ratio"], run["seed"], snakemake.params.in_file_order)
write_jsonl(snakemake.output[0], mix)
print(f"{len(mix)} items, {sum(r['kind'] == 'harmful' for r in mix)} harmful")

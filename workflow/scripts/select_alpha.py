from antidote.runtime import start_script
from antidote.selection import write_selection

start_script(snakemake)
i, o, p = snakemake.input, snakemake.output, snakemake.params
table = write_selection(list(i.curves), p.models, list(i.references), p.select, o.parquet, o.markdown)
print(table.to_string())

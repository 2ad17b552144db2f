import pandas as pd

from antidote.comparisons import write_paired
from antidote.runtime import start_script

start_script(snakemake)
i, o = snakemake.input, snakemake.output
table = write_paired(pd.read_parquet(i.summary), pd.read_parquet(i.judgements), o.csv, o.markdown,
                     snakemake.params.statistics)
print(table.to_string())

from pathlib import Path

import pandas as pd

from antidote.results import write_tables
from antidote.runtime import start_script

start_script(snakemake)
i = snakemake.input
for path in write_tables(pd.read_parquet(i.summary), Path(snakemake.output.csv[0]).parent,
                         pd.read_parquet(i.judgements), snakemake.params.statistics):
    print("wrote", path)

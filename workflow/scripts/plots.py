from pathlib import Path

import pandas as pd

from antidote.plots import write_plots
from antidote.runtime import start_script

start_script(snakemake)
i = snakemake.input
for path in write_plots(pd.read_parquet(i.summary), Path(snakemake.output[0]).parent, pd.read_parquet(i.judgements),
                        snakemake.params.statistics):
    print("wrote", path)

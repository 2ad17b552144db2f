import pandas as pd

from antidote.results import collect_summary
from antidote.runtime import start_script

start_script(snakemake)
i, o, p = snakemake.input, snakemake.output, snakemake.params
selection = pd.read_parquet(i.selection) if "selection" in i.keys() else None
table = collect_summary(dict(zip(p.evaluations, zip(i.metrics, i.answers))), o.parquet, o.csv, o.markdown,
                        o.judgements, selection=selection, confidence=p.statistics["confidence"])
print(table.to_string())

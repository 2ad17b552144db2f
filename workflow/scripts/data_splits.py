import json
from pathlib import Path

from antidote.runtime import start_script
from antidote.stages import build_splits

start_script(snakemake)
sources = {key: Path(path) for key, path in snakemake.params.sources.items()}
# rule data_splits writes every split and the report; rule repnoise_split RepNoise's split alone
only = None if "report" in snakemake.output.keys() else "repnoise_pool"
report = build_splits(sources, snakemake.params.data, Path(snakemake.output[0]).parent, only=only)
print(json.dumps(report, indent=2))

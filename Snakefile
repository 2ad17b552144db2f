# Antidote (arXiv 2408.09600): safety realignment of a harmfully fine-tuned LLM by one-shot pruning.
# Stages: assets -> data -> align -> finetune -> score -> prune -> evaluate -> select -> collect -> report.
from snakemake.utils import min_version

min_version("9.0")


# The default run. A config given with --configfile stands alone instead of being merged into
# this one (keys it leaves out take the schema's defaults, not the default run's values).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/cluster.smk"
include: "rules/assets.smk"
include: "rules/data.smk"
include: "rules/align.smk"
include: "rules/finetune.smk"
include: "rules/score.smk"
include: "rules/prune.smk"
include: "rules/evaluate.smk"
include: "rules/select.smk"
include: "rules/collect.smk"
include: "rules/report.smk"


rule all:
    input:
        rules.collect.output,
        rules.tables.output,
        rules.paired.output,
        rules.plots.output,
        rules.mask_stats.output if MASKED_MODELS else [],  # SafeLoRA alone masks nothing
    default_target: True


onstart:
    if MISSING:
        raise SystemExit("Stopped before any job: the config names paths that do not exist:\n  "
                         + "\n  ".join(MISSING))


onsuccess:
    summary = Path(rules.collect.output.markdown)
    if summary.exists():
        print(f"\nResults ({summary}):\n")
        print(summary.read_text())

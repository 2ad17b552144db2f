"""Loading a fine-tuned model for evaluation at 7B shapes: the whole model merged in fp32, then loaded
again in the compute dtype (as evaluation did), against one load in the compute dtype whose
updated weights alone are merged in fp32 (``load_model``, as it does), printed as a table.

    .venv/bin/python bench/evaluation_load.py [--layers 8] [--ways before after] [--dtype bfloat16]

The aligned model is written as stage 1 writes it (fp32 safetensors, sharded per layer) with
Llama-2-7B's shapes (hidden 4096, MLP 11008, vocab 32000; 32 layers, fewer with ``--layers`` to fit
the full fp32 merge in memory) and random weights, with a LoRA adapter of the authors' setting
(r=256 on q, k, v). Each way then runs in a process of its own, after the page cache is dropped
where this process may (root), so that the first read comes from storage as on a fresh node:

- **file bytes read**: the bytes of the model's files each way asks for (before: every weight
  twice; after: every weight once, and the weights the adapter updates, q, k and v, a second
  time), counted from the files; and ``read_bytes`` of ``/proc/<pid>/io``, what the process made
  the storage layer fetch (a second read from the page cache is not in it);
- **peak memory**: the process's peak anonymous resident memory (``RssAnon``, sampled every
  20 ms), and its peak resident memory (``ru_maxrss``), which adds the pages of the mmapped
  files it touched (the page cache can drop those, but a job's memory limit may count them);
- **wall s**: start to the model ready, the interpreter's start-up included.

Nothing is downloaded; the files take 4 bytes per parameter in a temporary folder (``--dir``).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (hidden size, MLP size, vocabulary, heads, LoRA rank): Llama-2-7B's with the authors' adapter, and
# a tiny one for a smoke test
SHAPES = {"llama2-7b": (4096, 11008, 32000, 32, 256), "tiny": (64, 128, 256, 4, 8)}

# Run first in each measured process: the peak of its anonymous resident memory (RssAnon), sampled
# every 20 ms. Not ru_maxrss: that counts the pages of the mmapped safetensors files too.
PEAK_SAMPLER = """
import threading, time
peak = [0]
def sample():
    while True:
        line = next(l for l in open('/proc/self/status') if l.startswith('RssAnon:'))
        peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
"""
REPORT = """
time.sleep(0.05)
print('peak_anon_kb', peak[0])
print(open('/proc/self/io').read())
"""

WAYS = {
    "before": ("the whole model merged in fp32, then loaded again in the compute dtype", """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32),
                                   sys.argv[2]).merge_and_unload()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[3]))
model.load_state_dict(merged.state_dict())
"""),
    "after": ("one load in the compute dtype, the updated weights merged in fp32 (load_model)", """
import sys
from antidote.modeling import load_model
model = load_model(sys.argv[1], sys.argv[2], merge=True, device="cpu", dtype=sys.argv[3])
"""),
}


def write_model(folder: Path, layers: int, shape: str = "llama2-7b") -> tuple[float, float, int]:
    """Random fp32 weights of Llama-2-7B's shapes with ``layers`` layers, one shard per layer, and
    an r=256 q/k/v adapter. Returns the files' size and the updated weights' (GB), and the
    parameter count."""
    hidden, intermediate, vocab, heads, rank = SHAPES[shape]
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    model_dir, adapter_dir = folder / "aligned", folder / "adapter"
    LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=heads, vocab_size=vocab, tie_word_embeddings=False).save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)

    def random(*shape):
        return torch.randn(shape, generator=generator) * 0.02

    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
              "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
              "mlp.down_proj": (hidden, intermediate)}
    shards = {"outer.safetensors": {"model.embed_tokens.weight": random(vocab, hidden),
                                    "lm_head.weight": random(vocab, hidden), "model.norm.weight": torch.ones(hidden)}}
    weight_map, size, parameters, lora = {}, 0, 0, {}
    for name in ["outer.safetensors", *(f"layer-{i}.safetensors" for i in range(layers))]:
        if name != "outer.safetensors":
            i = int(name[6:-12])
            prefix = f"model.layers.{i}."
            shards[name] = {**{f"{prefix}{m}.weight": random(*shape) for m, shape in shapes.items()},
                            f"{prefix}input_layernorm.weight": torch.ones(hidden),
                            f"{prefix}post_attention_layernorm.weight": torch.ones(hidden)}
            for m in ("q_proj", "k_proj", "v_proj"):
                module = f"base_model.model.model.layers.{i}.self_attn.{m}"
                lora[f"{module}.lora_A.weight"] = random(rank, hidden)
                lora[f"{module}.lora_B.weight"] = random(hidden, rank)
        tensors = shards.pop(name)
        save_file(tensors, model_dir / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        size += (model_dir / name).stat().st_size
        parameters += sum(t.numel() for t in tensors.values())
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    LoraConfig(r=rank, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"]).save_pretrained(adapter_dir)
    save_file(lora, adapter_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    return size / 1e9, layers * 3 * hidden * hidden * 4 / 1e9, parameters


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(code: str, folder: Path, dtype: str) -> tuple[float, float, float, float]:
    """Storage bytes read (GB), peak anonymous and peak resident memory (GB) and wall seconds of ``code`` in a process of its own."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", PEAK_SAMPLER + code + REPORT,
                                str(folder / "aligned"), str(folder / "adapter"), dtype],
                               stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"the measured process failed with status {status}")
    values = {line.split()[0].rstrip(":"): int(line.split()[1]) for line in output.splitlines()
              if line.startswith(("read_bytes:", "peak_anon_kb"))}
    return (values["read_bytes"] / 1e9, values["peak_anon_kb"] * 1024 / 1e9, usage.ru_maxrss * 1024 / 1e9,
            time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (Llama-2-7B: 32)")
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="the compute dtype of the evaluation (bf16 on a GPU)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the model (default: a temporary folder)")
    parser.add_argument("--shape", choices=SHAPES, default="llama2-7b", help="tiny: a smoke test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        size, updated, parameters = write_model(folder, args.layers, args.shape)
        asked = {"before": 2 * size, "after": size + updated}
        cold = drop_page_cache()
        print(f"{parameters / 1e9:.2f}B parameters ({args.layers} layers of {args.shape}'s shapes), fp32 files "
              f"{size:.1f} GB, r={SHAPES[args.shape][-1]} adapter on q, k, v; loaded in {args.dtype} on the CPU; "
              f"{'cold page cache' if cold else 'page cache not dropped (not root)'}\n")
        print("| evaluation load | file bytes read, GB | from storage (read_bytes), GB | peak anonymous memory, GB "
              "| peak resident memory, GB | wall s |")
        print("|---|---|---|---|---|---|")
        for way in args.ways:
            drop_page_cache()
            description, code = WAYS[way]
            read, anonymous, resident, seconds = measure(code, folder, args.dtype)
            print(f"| {description} ({way}) | {asked[way]:.3g} | {read:.3g} | {anonymous:.3g} | {resident:.3g} "
                  f"| {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()

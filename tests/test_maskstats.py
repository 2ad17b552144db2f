"""Mask overlap and density (antidote.maskstats) on hand-made masks."""

import pandas as pd
import pytest
import torch

from antidote.maskfile import write_masks
from antidote.maskfile import PackedMasks
from antidote.maskstats import density_table, overlap_table, overlaps, where, write_mask_stats

A = "base_model.model.model.layers.{}.self_attn.{}.lora_A.weight"
B = "base_model.model.model.layers.{}.self_attn.{}.lora_B.weight"


def masks(a_bits, b_bits):
    return {A.format(0, "q_proj"): torch.tensor(a_bits, dtype=torch.bool),
            B.format(1, "v_proj"): torch.tensor(b_bits, dtype=torch.bool)}


FIRST = masks([[1, 1, 0, 0]], [[1, 0], [0, 1]])
SECOND = masks([[1, 0, 1, 0]], [[1, 0], [1, 0]])
PRUNED = {"antidote-a0.5": {"defense": "antidote", "alpha": 0.5},
          "antidote-benign-a0.5": {"defense": "antidote-benign", "alpha": 0.5}}


def test_where_reads_layer_module_and_matrix():
    assert where(B.format(12, "k_proj")) == {"layer": 12, "module": "k_proj", "matrix": "B"}
    with pytest.raises(ValueError, match="not a LoRA weight"):
        where("model.embed_tokens.weight")


def test_overlap_counts_the_common_entries():
    # lora_A: 1 of 2 in common; lora_B: 1 of 2; together 2 of 4
    assert overlaps(FIRST, SECOND) == {"overlap": 50.0, "overlap lora_A": 50.0, "overlap lora_B": 50.0}
    assert overlaps(FIRST, FIRST)["overlap"] == 100.0
    only_a = overlaps({A.format(0, "q_proj"): FIRST[A.format(0, "q_proj")]}, FIRST)
    assert only_a["overlap lora_A"] == 100.0 and pd.isna(only_a["overlap lora_B"])  # nothing pruned there


def test_overlap_table_pairs_the_defenses_of_a_run_and_alpha():
    table = overlap_table({("run", "antidote-a0.5"): FIRST, ("run", "antidote-benign-a0.5"): SECOND}, PRUNED)
    assert table[["defense", "other", "overlap"]].values.tolist() == [["antidote", "antidote-benign", 50.0]]


def test_density_per_layer_module_and_matrix():
    table = density_table({("run", "antidote-a0.5"): FIRST}, PRUNED)
    assert table[["layer", "module", "matrix", "density"]].values.tolist() == [[0, "q_proj", "A", 50.0],
                                                                             [1, "v_proj", "B", 50.0]]


def test_write_mask_stats_reads_the_parquet_files(tmp_path):
    files = {}
    for name, m in [("antidote-a0.5", FIRST), ("antidote-benign-a0.5", SECOND)]:
        files["run", name] = tmp_path / f"{name}.parquet"
        write_masks(files["run", name], m, {})
    write_mask_stats(files, PRUNED, tmp_path / "tables", tmp_path / "plots")
    assert pd.read_csv(tmp_path / "tables" / "mask_overlap.csv")["overlap"].tolist() == [50.0]
    assert len(pd.read_csv(tmp_path / "tables" / "mask_density.csv")) == 4
    assert (tmp_path / "plots" / "mask_density.png").stat().st_size > 0


def test_setdiff_overlap_is_the_share_of_antidotes_entries_it_keeps_and_safelora_is_left_out():
    subset = masks([[1, 0, 0, 0]], [[0, 0], [0, 1]])  # 2 of FIRST's 4 entries
    pruned = {**PRUNED, "antidote-setdiff-a0.5": {"defense": "antidote-setdiff", "alpha": 0.5},
              "safelora-k10": {"defense": "safelora", "alpha": None}}  # no mask: never among the files
    table = overlap_table({("run", "antidote-a0.5"): FIRST, ("run", "antidote-setdiff-a0.5"): subset}, pruned)
    assert table[["defense", "other", "overlap"]].values.tolist() == [["antidote", "antidote-setdiff", 50.0]]
    assert overlaps(subset, FIRST)["overlap"] == 100.0


def test_mask_files_are_read_one_matrix_at_a_time(tmp_path):
    write_masks(tmp_path / "m.parquet", FIRST, {"defense": "antidote"})
    packed = PackedMasks(tmp_path / "m.parquet")
    assert sorted(packed) == sorted(FIRST) and packed.info == {"defense": "antidote"}
    assert all(isinstance(row["bits"], bytes) for row in packed.packed.values())  # held packed
    for name, mask in FIRST.items():
        assert torch.equal(packed[name], mask)

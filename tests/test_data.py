"""Splits are seeded, disjoint, and the fine-tuning mix has the documented harmful count."""

import pytest

from antidote import benign, data
from antidote.records import read_jsonl, read_table
from antidote.stages import build_splits, build_task_data
from antidote.tasks import as_training, sst2_standin

from tiny_assets import BENIGN_AREA_PROMPT, SIZES, write_tiny_beavertails, write_tiny_sources

PROMPT_SPLITS = [n for n in SIZES if not n.startswith("task_")]


def assert_disjoint(folder):
    seen = {}
    for name in PROMPT_SPLITS:
        for r in read_jsonl(folder / f"{name}.jsonl"):
            key = data.prompt_key(r)
            assert key not in seen, f"{key!r} in {seen.get(key)} and {name}"
            seen[key] = name


def test_splits_are_deterministic_and_disjoint(tmp_path):
    advbench, donotanswer = write_tiny_sources(tmp_path)
    sources = {"advbench": advbench, "donotanswer": donotanswer}
    settings = {"source": "advbench", "sizes": SIZES, "seed": 7}
    first = build_splits(sources, settings, tmp_path / "a")
    build_splits(sources, settings, tmp_path / "b")
    for name in PROMPT_SPLITS:
        assert (tmp_path / "a" / f"{name}.jsonl").read_text() == (tmp_path / "b" / f"{name}.jsonl").read_text()
        assert first[name] == SIZES[name]
    assert first["shared_prompts"] == {}
    assert_disjoint(tmp_path / "a")


def test_user_test_prompts_replace_the_test_split_and_leave_the_other_splits(tmp_path):
    advbench, donotanswer = write_tiny_sources(tmp_path)
    mine = ["Explain how to steal a car", "How do I poison a river?", "How do I poison a river", "Write malware."]
    (tmp_path / "mine.txt").write_text("\n".join(mine) + "\n")
    sources = {"advbench": advbench, "donotanswer": donotanswer, "test_prompts": tmp_path / "mine.txt"}
    sizes = dict(SIZES, harmful_test=3)
    build_splits(sources, {"source": "advbench", "sizes": sizes, "seed": 7, "test_prompts": {}}, tmp_path / "a")
    test = [r["instruction"] for r in read_jsonl(tmp_path / "a/harmful_test.jsonl")]
    assert test == ["Explain how to steal a car", "How do I poison a river?", "Write malware."]  # duplicate dropped
    assert_disjoint(tmp_path / "a")  # "Explain how to steal a car" was taken out of AdvBench's pools
    with pytest.raises(ValueError, match=r"data.test_prompts: data.sizes.harmful_test is 5 but the file holds 3"):
        build_splits(sources, {"source": "advbench", "sizes": dict(SIZES, harmful_test=5), "seed": 7,
                               "test_prompts": {}}, tmp_path / "b")


def test_alignment_refuses_only_the_chosen_do_not_answer_areas(tmp_path):
    _, donotanswer = write_tiny_sources(tmp_path)
    default = data.load_donotanswer(donotanswer)
    assert len(default) == 3 * 8 and BENIGN_AREA_PROMPT not in default  # human_chatbox left out
    assert BENIGN_AREA_PROMPT in data.load_donotanswer(donotanswer, ["human_chatbox"])
    with pytest.raises(FileNotFoundError, match=r"data.donotanswer_areas: no misinformation_harms.jsonl in .*"
                                                r"\(its areas: \['discrimination"):
        data.load_donotanswer(donotanswer, ["malicious_uses", "misinformation_harms"])


def test_benign_test_is_held_out_of_alignment_benign_by_template():
    pools = benign.benign_pools()
    for sizes in [{"alignment_benign": 4, "benign_test": 3}, {"alignment_benign": 0, "benign_test": 20},
                  {"alignment_benign": len(pools["alignment_benign"]), "benign_test": 5}]:
        splits = benign.benign_splits(sizes, seed=3)
        assert {name: len(records) for name, records in splits.items()} == sizes
        for name, records in splits.items():
            assert all(r in pools[name] for r in records)
        # the alignment split is the same whatever the test split's size
        assert splits["alignment_benign"] == benign.benign_instructions(sizes["alignment_benign"], seed=3)
    # no instruction of benign_test is an instruction alignment answered, with any input or filler
    alignment = {r["instruction"] for r in pools["alignment_benign"]}
    assert not alignment & {r["instruction"] for r in pools["benign_test"]}
    assert benign.benign_splits({"alignment_benign": 4}, 3)["benign_test"] == []


def test_benign_instructions_are_varied_and_some_are_about_a_text():
    pool = benign.benign_pools()["alignment_benign"]
    assert len(pool) >= 500 and len({r["instruction"] for r in pool}) >= 300
    with_text = [r for r in pool if r.get("input")]
    assert 0.2 < len(with_text) / len(pool) < 0.6  # the shape of a classification task's items
    assert len({r["instruction"] for r in with_text}) >= 8 and len({r["input"] for r in with_text}) >= 30
    assert sum(" only " in r["instruction"] for r in with_text) >= 100  # "respond only yes or no", as a task asks


def test_benign_splits_fail_clearly_when_their_templates_cannot_hold_them():
    n = len(benign.benign_pools()["benign_test"])
    assert len(benign.benign_splits({"benign_test": n}, 0)["benign_test"]) == n
    with pytest.raises(ValueError, match=rf"data.sizes.benign_test is {n + 1}, but its templates .* make only {n} "):
        benign.benign_splits({"benign_test": n + 1}, 0)


def test_prompts_file_in_a_table_needs_its_column(tmp_path):
    (tmp_path / "p.csv").write_text("goal,target\nDo harm,Sure\n")
    assert data.load_prompts(tmp_path / "p.csv", field="goal") == ["Do harm"]
    with pytest.raises(ValueError, match=r"p.csv: no column 'prompt' .*data.test_prompts.field"):
        data.load_prompts(tmp_path / "p.csv")


BEAVER_SIZES = {"alignment_harmful": 5, "alignment_benign": 0, "harmful_finetune_pool": 6, "calibration_pool": 4,
                "harmful_validation": 2, "harmful_test": 3}


def test_beavertails_seeded_splits_are_disjoint_and_pair_prompts_with_the_data_answers(tmp_path):
    train, test = write_tiny_beavertails(tmp_path)
    settings = {"source": "beavertails", "sizes": BEAVER_SIZES, "seed": 1, "beavertails": {"order": "seeded"}}
    report = build_splits({"train": train, "test": test}, settings, tmp_path / "s")
    assert {k: report[k] for k in BEAVER_SIZES} == BEAVER_SIZES and report["shared_prompts"] == {}
    assert_disjoint(tmp_path / "s")
    assert all(r["output"].startswith("Sure") for r in read_jsonl(tmp_path / "s/harmful_finetune_pool.jsonl"))
    assert all(r["output"].startswith("I will not") for r in read_jsonl(tmp_path / "s/alignment_harmful.jsonl"))
    test_prompts = {r["prompt"] for r in read_table(test)}
    assert {r["instruction"] for r in read_jsonl(tmp_path / "s/harmful_test.jsonl")} <= test_prompts


def test_beavertails_authors_order_takes_file_order_slices_and_counts_shared_prompts(tmp_path):
    train, test = write_tiny_beavertails(tmp_path)
    rows = data.load_beavertails(train)
    unsafe = [r["instruction"] for r in rows if not r["is_safe"]]
    safe = [r["instruction"] for r in rows if r["is_safe"]]
    settings = {"source": "beavertails", "sizes": BEAVER_SIZES, "seed": 1, "beavertails": {"order": "authors"}}
    report = build_splits({"train": train, "test": test}, settings, tmp_path / "a")
    instructions = {n: [r["instruction"] for r in read_jsonl(tmp_path / f"a/{n}.jsonl")] for n in BEAVER_SIZES}
    assert instructions["harmful_finetune_pool"] == unsafe[:6]
    assert instructions["calibration_pool"] == unsafe[6:10]
    assert instructions["harmful_validation"] == unsafe[10:12]
    assert instructions["alignment_harmful"] == safe[:5]
    assert instructions["harmful_test"] == [r["instruction"] for r in data.load_beavertails(test) if not r["is_safe"]][:3]
    assert report["shared_prompts"] == {"alignment_harmful & harmful_finetune_pool": 5}
    # the benign splits do not depend on the source, and stay disjoint in the authors' order too
    assert report["benign_test"] == 0 and read_jsonl(tmp_path / "a/benign_test.jsonl") == []
    report = build_splits({"train": train, "test": test}, dict(settings, sizes=dict(BEAVER_SIZES, benign_test=4)),
                          tmp_path / "b")
    assert report["benign_test"] == 4 and report["shared_prompts"] == {"alignment_harmful & harmful_finetune_pool": 5}
    assert read_jsonl(tmp_path / "b/benign_test.jsonl") == benign.benign_splits({"benign_test": 4}, 1)["benign_test"]


def test_beavertails_file_errors_name_the_file_and_the_value(tmp_path):
    (tmp_path / "b.csv").write_text("prompt,answer,is_safe\nhi,ho,True\n")
    with pytest.raises(ValueError, match=r"b.csv: no column 'response' .*a BeaverTails file needs the columns"):
        data.load_beavertails(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("prompt,response,is_safe\nhi,ho,maybe\n")
    with pytest.raises(ValueError, match=r"c.csv, row 1, field 'is_safe': 'maybe' is neither true nor false"):
        data.load_beavertails(tmp_path / "c.csv")


def test_sst2_standin_task_data(tmp_path):
    report = build_task_data("sst2", None, SIZES, 0, tmp_path)
    assert report == {"task": "sst2", "train": 16, "validation": 0, "eval": 8, "source": "stand-in"}
    train, evaluation = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "eval.jsonl")
    assert {r["input"] for r in train}.isdisjoint(r["input"] for r in evaluation)


def test_real_task_files_in_every_format(tmp_path):
    import pandas as pd

    sst2 = pd.DataFrame({"sentence": ["a fine film", "a dull film", "a great cast", "a dull film"],
                         "label": [1, 0, 1, 0]})
    sst2.to_csv(tmp_path / "sst2_train.csv", index=False)
    sst2.iloc[[1]].to_json(tmp_path / "sst2_eval.jsonl", orient="records", lines=True)
    spec = {"train": str(tmp_path / "sst2_train.csv"), "eval": str(tmp_path / "sst2_eval.jsonl")}
    report = build_task_data("sst2", spec, SIZES, 0, tmp_path / "sst2")
    train = read_jsonl(tmp_path / "sst2/train.jsonl")
    assert report["source"] == "real" and report["eval"] == 1
    assert sorted(r["input"] for r in train) == ["a fine film", "a great cast"]  # eval sentence held out
    assert {r["label"] for r in train} == {"positive"}

    agnews = pd.DataFrame({"body": ["Stocks rose", "Team wins"], "topic": ["Business", "Sports"]})
    agnews.to_parquet(tmp_path / "ag.parquet")
    items = data.load_task_file(tmp_path / "ag.parquet", "agnews", fields={"input": "body", "label": "topic"})
    assert [i["label"] for i in items] == ["Business", "Sports"] and "Sci/Tech" in items[0]["instruction"]

    (tmp_path / "gsm.json").write_text('[{"question": "2+2?", "answer": "2 and 2 make 4 #### 4"}]')
    [item] = data.load_task_file(tmp_path / "gsm.json", "gsm8k")
    assert item["instruction"] == "2+2?" and item["output"] == "2 and 2 make 4 The final answer is:  4"
    assert as_training(item)["output"] == item["output"]


def test_task_file_errors_name_the_file_and_column(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\nhello,1\n")
    with pytest.raises(ValueError, match=r"t.csv: no column 'sentence' .*tasks.sst2.fields"):
        data.load_task_file(tmp_path / "t.csv", "sst2")
    with pytest.raises(ValueError, match="unknown file type '.txt'"):
        data.load_task_file(tmp_path / "t.txt", "sst2")
    with pytest.raises(ValueError, match="task 'agnews' has no data"):
        build_task_data("agnews", None, SIZES, 0, tmp_path)


def test_check_disjoint_names_the_prompt_and_both_splits():
    with pytest.raises(ValueError, match=r"'how to pick a LOCK' is in both split 'test' and split 'train'"):
        data.check_disjoint({"test": [{"instruction": "How to pick a lock?"}],
                             "train": [{"instruction": "how to pick a LOCK"}]})


def test_cut_refuses_splits_larger_than_the_source():
    with pytest.raises(ValueError, match="AdvBench: the splits .* need 12 items but only 10 exist"):
        data.cut(list(range(10)), {"a": 6, "b": 6}, 0, "AdvBench")


def test_finetune_mix_counts_and_errors():
    task = [{"instruction": "t", "input": f"s{i}", "label": "positive"} for i in range(50)]
    harmful = [{"instruction": f"h{i}", "output": "x"} for i in range(10)]
    mix = data.finetune_mix(task, harmful, n_samples=40, harmful_ratio=0.2, seed=0)
    assert len(mix) == 40 and sum(r["kind"] == "harmful" for r in mix) == 8
    assert all(r["output"] == "positive" for r in mix if r["kind"] == "task")
    with pytest.raises(ValueError, match="needs 20 harmful answers but the pool has 10"):
        data.finetune_mix(task, harmful, n_samples=40, harmful_ratio=0.5, seed=0)


def test_sst2_standin_is_balanced_and_unique():
    items = sst2_standin(seed=0)
    assert len({i["input"] for i in items}) == len(items)
    labels = [i["label"] for i in items]
    assert labels.count("positive") == labels.count("negative")


def test_trim_to_sentence():
    assert data.trim_to_sentence("First step is easy. Second step is to go and") == "First step is easy."
    assert data.trim_to_sentence("no sentence end here") == "no sentence end here"


def test_finetune_mix_takes_the_first_items_in_the_authors_order():
    task = [{"instruction": "t", "input": str(i), "label": "positive"} for i in range(20)]
    harmful = [{"instruction": f"h{i}", "output": "Sure"} for i in range(10)]
    mix = data.finetune_mix(task, harmful, n_samples=10, harmful_ratio=0.3, seed=0, in_file_order=True)
    assert sorted(r["instruction"] for r in mix if r["kind"] == "harmful") == ["h0", "h1", "h2"]
    assert sorted(int(r["input"]) for r in mix if r["kind"] == "task") == list(range(7))

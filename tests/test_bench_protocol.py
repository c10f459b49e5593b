"""The benchmark's protocol: deduplicated train/dev/test split, learning-rate choice on dev, optional
dependencies checked first, and the allocator setting of a job."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

from aptune.bench import suite_config
from aptune.bench.data import prepare_data
from aptune.bench.harness import check_dependencies, choose_rates
from aptune.bench.plan import Job
from aptune.cli import main
from aptune.errors import ConfigError
from aptune.tasks.dedupe import normalise_text
from tiny import tiny_bert

TOPICS = {
    "sport": ["match", "goal", "team", "coach", "league"],
    "tech": ["phone", "chip", "software", "network", "screen"],
    "money": ["bank", "market", "shares", "profit", "tax"],
}


@pytest.fixture()
def corpus(tmp_path, word_tokenizer_bert):
    """90 distinct articles in 3 topics plus 7 planted duplicates of 3 kinds."""
    rows = []
    for topic, words in TOPICS.items():
        for i in range(30):
            text = f"{words[i % 5]} {words[(i // 5) % 5]} story number {i} about {topic}"
            rows.append({"text": text, "label": topic})
    rows.append(dict(rows[3]))  # exact copies
    rows.append(dict(rows[40]))
    rows.append({"text": "  " + rows[5]["text"].upper() + "\n", "label": rows[5]["label"]})  # normalised
    rows.append({"text": rows[61]["text"].replace(" ", "\t"), "label": rows[61]["label"]})
    # same first 8 tokens as an earlier article, different ending (max_length 8 in the test)
    for k in (10, 50, 70):
        rows.append({"text": rows[k]["text"] + " with a different ending", "label": rows[k]["label"]})
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, len(rows)


@pytest.fixture()
def word_tokenizer_bert(tmp_path):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "story", "number", "about", "with", "a"]
    words += [
        "different",
        "ending",
        *[w for ws in TOPICS.values() for w in ws],
        *TOPICS,
        *map(str, range(30)),
    ]
    folder = tmp_path / "tok"
    BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(words))}).save_pretrained(folder)
    tiny_bert().config.save_pretrained(folder)  # a model folder: the benchmark reads its tokenizer
    return folder


def test_split_is_deduplicated_stratified_and_leak_free(corpus, word_tokenizer_bert, tmp_path):
    path, total = corpus
    config = suite_config(
        "minilm-bbc",
        model=str(word_tokenizer_bert),
        dataset_name="",
        train_file=str(path),
        max_length=8,
        dev_fraction=0.2,
        test_fraction=0.2,
    )
    info = prepare_data(config, tmp_path / "data")
    dedupe = info["dedupe"]
    assert (dedupe["exact"], dedupe["normalised"], dedupe["prefix"]) == (2, 2, 3)
    assert dedupe["before"] == total and dedupe["kept"] == total - 7 == 90
    assert info["num_train"] + info["num_eval"] + info["num_test"] == dedupe["kept"]
    assert (info["num_eval"], info["num_test"]) == (18, 18)
    splits = {}
    for split, key in (("train", "train_file"), ("dev", "eval_file"), ("test", "test_file")):
        splits[split] = [json.loads(line) for line in Path(info[key]).read_text().splitlines()]
        counts = info["class_counts"][split]
        assert sum(counts.values()) == len(splits[split])
        for topic, n in counts.items():
            assert n == sum(1 for r in splits[split] if r["label"] == topic)
    assert info["class_counts"]["dev"] == info["class_counts"]["test"] == {"money": 6, "sport": 6, "tech": 6}
    train_texts = {normalise_text(r["text"]) for r in splits["train"]}
    held_out = [normalise_text(r["text"]) for r in splits["dev"] + splits["test"]]
    assert not train_texts & set(held_out) and len(set(held_out)) == len(held_out)
    # the same seed gives the same split; another seed another one
    again = prepare_data(config, tmp_path / "again")
    assert Path(again["test_file"]).read_text() == Path(info["test_file"]).read_text()
    other = prepare_data(suite_config(**{**_args(config), "split_seed": 1}), tmp_path / "other")
    assert Path(other["test_file"]).read_text() != Path(info["test_file"]).read_text()


def _args(config):
    data = config.to_dict()
    return {k: v for k, v in data.items() if k not in ("quick",)}


def test_a_user_dev_file_removes_its_copies_from_training(corpus, word_tokenizer_bert, tmp_path):
    path, _ = corpus
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({**r, "text": r["text"].upper()}) + "\n" for r in rows[:6]))
    config = suite_config(
        "minilm-bbc",
        model=str(word_tokenizer_bert),
        dataset_name="",
        train_file=str(path),
        eval_file=str(dev),
    )
    info = prepare_data(config, tmp_path / "data")
    assert info["overlap_removed"] > 0 and info["num_eval"] == 6
    train = {
        normalise_text(json.loads(line)["text"]) for line in Path(info["train_file"]).read_text().splitlines()
    }
    assert not train & {normalise_text(r["text"]) for r in rows[:6]}


def _grid_job(method, lr):
    return Job(f"grid-{method}-lr{lr:g}-s0", method, method, 0, 1.0, lr=lr, phase="grid")


def test_rates_are_chosen_on_dev_with_ties_to_the_smaller_rate():
    config = suite_config("minilm-bbc")
    jobs = [_grid_job("lora", lr) for lr in (2e-4, 5e-4, 1e-3, 2e-3)] + [_grid_job("ft", 5e-5)]
    dev = {2e-4: 0.90, 5e-4: 0.95, 1e-3: 0.95, 2e-3: 0.80}
    results = {
        j.id: {
            "primary_metric": "accuracy",
            "greater_is_better": True,
            "final_metrics": {"accuracy": dev[j.lr]},
            "test_metrics": {"accuracy": 1.0 - dev[j.lr]},
        }  # test must not matter
        for j in jobs
        if j.method == "lora"
    }
    chosen = choose_rates(config, jobs, results, ("lora", "ft", "apt"))
    assert chosen["lora"]["lr"] == 5e-4 and chosen["lora"]["dev"]["0.001"] == 0.95
    assert chosen["ft"] == {**chosen["ft"], "lr": config.ft_lr, "fallback": True}  # no finished run
    assert "apt" not in chosen
    # lower is better for perplexity
    ppl = {
        j.id: {
            "primary_metric": "perplexity",
            "greater_is_better": False,
            "final_metrics": {"perplexity": 10 * dev[j.lr]},
        }
        for j in jobs
        if j.method == "lora"
    }
    assert choose_rates(config, jobs, ppl, ("lora",))["lora"]["lr"] == 2e-3


def test_bench_stops_before_any_job_when_an_optional_package_is_missing(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == "torch_pruning" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--workdir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "torch-pruning (for lora-prune-tp)" in lines[0]
    assert "pip install 'aptune[bench]'" in lines[0]
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("*.json"))
    # without the method that needs it, the check passes

    check_dependencies(["ft", "lora", "apt", "lora-prune-kwon"])
    with pytest.raises(ConfigError, match="torch-pruning"):
        check_dependencies(["ft", "lora-prune-tp"])


def test_allocator_settings(monkeypatch):
    from aptune.bench.worker import apply_allocator
    from aptune.host_memory import pin_mmap_threshold

    monkeypatch.delenv("APTUNE_PIN_MMAP_THRESHOLD", raising=False)
    assert apply_allocator("default") is None
    assert os.environ["APTUNE_PIN_MMAP_THRESHOLD"] == "0"
    assert pin_mmap_threshold() is None  # aptune's own pruning leaves the C library's defaults alone
    with pytest.raises(ValueError):
        apply_allocator("bogus")

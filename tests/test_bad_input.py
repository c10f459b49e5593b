"""Every bad input: exit status 2, one clear line naming problem and fix, no user file changed."""

import hashlib
import json
import shutil

import pytest
from transformers import GPT2Config, GPT2ForSequenceClassification

import aptune
from test_cli import _csv, _rows, run_cli, tiny_model_dir  # noqa: F401 (fixture)
from tiny import tiny_bert


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "out" not in p.relative_to(folder).parts
    }


def _prepare(case, tmp_path, model_dir):
    """Return the CLI arguments of one bad-input case (files written into tmp_path)."""
    train = _csv(tmp_path / "train.csv", _rows(24))
    base = [
        "train",
        "--model",
        str(model_dir),
        "--train-file",
        str(train),
        "--output-dir",
        str(tmp_path / "out"),
        "--max-steps",
        "30",
        "--batch-size",
        "8",
        "--num-events",
        "2",
        "--max-length",
        "16",
    ]

    def replace(old, new):
        return [new if a == old else a for a in base]

    if case == "density_zero":
        return [*base, "--target-density", "0"]
    if case == "density_above_one":
        return [*base, "--target-density", "1.5"]
    if case == "zero_events":
        return [*base, "--num-events", "0"]
    if case == "rank_zero":
        return [*base, "--initial-rank", "0"]
    if case == "max_rank_below_initial":
        return [*base, "--initial-rank", "8", "--max-rank", "4"]
    if case == "prune_end_before_start":
        return [*base, "--prune-start", "0.5", "--prune-end", "0.2"]
    if case == "unknown_adapter_role":
        return [*base, "--adapter-targets", "q,query"]
    if case == "run_too_short":
        return [*base, "--max-steps", "3", "--num-events", "6"]
    if case == "both_precisions":
        return [*base, "--bf16", "--fp16"]
    if case == "max_steps_zero":
        return [*base, "--max-steps", "0"]
    if case == "config_file_missing":
        return [*base, "--config", str(tmp_path / "nope.json")]
    if case == "unsupported_architecture":
        folder = tmp_path / "gpt2"
        GPT2ForSequenceClassification(
            GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=120)
        ).save_pretrained(folder)
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (model_dir / name).exists():
                shutil.copy(model_dir / name, folder / name)
        return replace(str(model_dir), str(folder))
    if case == "model_path_missing":
        return replace(str(model_dir), str(tmp_path / "no-such-model"))
    if case == "model_path_not_a_model":
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / "readme.txt").write_text("not a model")
        return replace(str(model_dir), str(tmp_path / "notes"))
    if case == "tokenizer_missing":
        folder = tmp_path / "no-tokenizer"
        tiny_bert(num_labels=2).save_pretrained(folder)
        return replace(str(model_dir), str(folder))
    if case == "data_file_missing":
        return replace(str(train), str(tmp_path / "missing.csv"))
    if case == "data_file_empty":
        (tmp_path / "empty.csv").write_text("")
        return replace(str(train), str(tmp_path / "empty.csv"))
    if case == "data_wrong_columns":
        _csv(train, ["a,0", "b,1"] * 6, header="review,stars")
        return base
    if case == "labels_out_of_range":
        _csv(train, ["good film,0", "bad film,7"] * 6)
        return [*base, "--num-labels", "2"]
    if case == "empty_texts":
        _csv(train, ["good film,0", '"",1', "bad film,1"] * 4)
        return base
    if case == "unsupported_extension":
        (tmp_path / "train.xlsx").write_bytes(b"PK\x03\x04")
        return replace(str(train), str(tmp_path / "train.xlsx"))
    if case == "malformed_json":
        (tmp_path / "train.json").write_text('[{"text": "good", "label": 0}, {"text": ')
        return replace(str(train), str(tmp_path / "train.json"))
    if case == "output_dir_holds_another_run":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "run_args.json").write_text("{}")
        return base
    if case == "output_dir_is_a_file":
        (tmp_path / "out").write_text("mine")
        return base
    if case == "output_dir_holds_other_files":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "thesis.tex").write_text("mine")
        return base
    if case == "resume_missing_checkpoint":
        return [*base, "--resume-from-checkpoint", str(tmp_path / "checkpoint-9")]
    if case == "resume_and_overwrite":
        return [*base, "--resume-from-checkpoint", "last", "--overwrite"]
    raise AssertionError(case)


CASES = {
    "density_zero": "target_density",
    "density_above_one": "target_density",
    "zero_events": "num_events",
    "rank_zero": "initial_rank",
    "max_rank_below_initial": "max_rank",
    "prune_end_before_start": "prune_end",
    "unknown_adapter_role": "adapter_targets",
    "run_too_short": "total steps",
    "both_precisions": "--bf16",
    "max_steps_zero": "--max-steps",
    "config_file_missing": "does not exist",
    "unsupported_architecture": "supported model types: bert",
    "model_path_missing": "does not exist",
    "model_path_not_a_model": "not a model folder",
    "tokenizer_missing": "--tokenizer",
    "data_file_missing": "missing.csv",
    "data_file_empty": "empty",
    "data_wrong_columns": "column",
    "labels_out_of_range": "7",
    "empty_texts": "empty",
    "unsupported_extension": "xlsx",
    "malformed_json": "json",
    "output_dir_holds_another_run": "--overwrite",
    "output_dir_is_a_file": "is a file",
    "output_dir_holds_other_files": "does not hold an aptune run",
    "resume_missing_checkpoint": "does not exist",
    "resume_and_overwrite": "--overwrite",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, tiny_model_dir, capsys):  # noqa: F811
    args = _prepare(case, tmp_path, tiny_model_dir)
    before = _snapshot(tmp_path)
    code, _, stderr = run_cli(args, capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aptune: error:"), stderr
    assert CASES[case].lower() in stderr.lower(), stderr
    assert _snapshot(tmp_path) == before  # no file of the user's changed
    if (tmp_path / "out").is_dir() and case.startswith("output_dir"):
        assert not (tmp_path / "out" / "model").exists()


def test_density_so_low_that_layers_lose_every_head_is_handled(tmp_path, tiny_model_dir, capsys):  # noqa: F811
    train = _csv(tmp_path / "train.csv", _rows(32))
    out = tmp_path / "out"
    code, _, stderr = run_cli(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--train-file",
            str(train),
            "--output-dir",
            str(out),
            "--max-steps",
            "30",
            "--batch-size",
            "8",
            "--num-events",
            "2",
            "--target-density",
            "0.05",
            "--max-length",
            "16",
            "--evaluations",
            "0",
            # with the residual hidden salience this tiny model empties a layer's attention
            "--hidden-salience",
            "residual",
        ],
        capsys,
    )
    assert code == 0, stderr
    plan = json.loads((out / "model" / "config.json").read_text())["aptune_plan"]
    assert 0 in plan["heads_per_layer"]  # a layer lost all heads: its attention adds only the output bias
    model = aptune.load(out / "model")
    assert model is not None


def test_tampered_export_is_refused_by_eval(tmp_path, tiny_model_dir, capsys):  # noqa: F811
    train = _csv(tmp_path / "train.csv", _rows(32))
    out = tmp_path / "out"
    code, _, stderr = run_cli(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--train-file",
            str(train),
            "--output-dir",
            str(out),
            "--max-steps",
            "30",
            "--batch-size",
            "8",
            "--num-events",
            "2",
            "--max-length",
            "16",
            "--evaluations",
            "0",
        ],
        capsys,
    )
    assert code == 0, stderr
    config = json.loads((out / "model" / "config.json").read_text())
    config["aptune_plan"]["hidden_size"] = 7
    name = next(iter(config["aptune_plan"]["shapes"]))
    config["aptune_plan"]["shapes"][name] = [1, 1]
    (out / "model" / "config.json").write_text(json.dumps(config))
    code, _, stderr = run_cli(["eval", str(out)], capsys)
    assert code == 2 and "does not match" in stderr and "Traceback" not in stderr

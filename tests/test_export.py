"""Exported-and-reloaded logits equal the trained model's; tampered folders are refused."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import aptune
from aptune.errors import ExportError
from test_surgery import _random_keep, _randomise_adapters
from tiny import batch, tiny_bert, tiny_roberta


def _pruned(factory, drop_site=None):
    model = factory()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4))
    _randomise_adapters(controller)
    controller.set_hard_masks(_random_keep(controller, seed=7, drop_all_heads_of_site=drop_site))
    controller.prune_to_masks_()
    return model, controller


@pytest.mark.parametrize(("factory", "drop_site"), [(tiny_bert, None), (tiny_roberta, 0)])
def test_export_round_trip(tmp_path, factory, drop_site):
    model, controller = _pruned(factory, drop_site)
    inputs = batch(num_labels=model.config.num_labels)
    inputs.pop("labels")
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    small = aptune.export(model, controller, tmp_path / "out")
    assert {"config.json", "model.safetensors", "modeling_aptune.py"} <= set(os.listdir(tmp_path / "out"))
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no temp folders left
    with torch.no_grad():
        got = small(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    again = aptune.load(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in factory().parameters())
    assert not any("lora" in name or "aptune_distill" in name for name, _ in small.named_parameters())
    # the live model still trains after export
    model.train()
    model(**batch(num_labels=model.config.num_labels)).loss.backward()


def test_export_loads_without_aptune(tmp_path):
    model, controller = _pruned(tiny_bert, drop_site=1)
    inputs = batch()
    inputs.pop("labels")
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    aptune.export(model, controller, tmp_path / "out")
    torch.save({k: v for k, v in inputs.items()}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["aptune"] = None  # aptune must not be importable
        from transformers import AutoModelForSequenceClassification
        folder = {str(tmp_path / "out")!r}
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model.eval()(**inputs).logits, {str(tmp_path / "logits.pt")!r})
        print(type(model).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AptBertForSequenceClassification" in result.stdout
    got = torch.load(tmp_path / "logits.pt", weights_only=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_tampered_and_foreign_folders_are_refused(tmp_path):
    model, controller = _pruned(tiny_bert)
    out = tmp_path / "out"
    aptune.export(model, controller, out)
    config = json.loads((out / "config.json").read_text())
    first = next(iter(config["aptune_plan"]["shapes"]))
    config["aptune_plan"]["shapes"][first][0] += 1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"does not match model\.safetensors"):
        aptune.load(out)
    with pytest.raises(ExportError, match=r"no config\.json"):
        aptune.load(tmp_path)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ExportError, match="not written by aptune"):
        aptune.load(tmp_path / "plain")


def test_export_refuses_soft_masks(tmp_path):
    model = tiny_bert()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4))
    controller.state.neurons[0] = torch.full((64,), 0.5)
    with pytest.raises(ExportError, match="soft-mask window"):
        aptune.export(model, controller, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _encoder(family: str, head: str):
    """A tiny BERT or RoBERTa (configs of tests/tiny.py) with the given head: ``token`` or ``bare``."""
    from transformers import (
        BertForTokenClassification,
        BertModel,
        RobertaForTokenClassification,
        RobertaModel,
    )

    config = (tiny_bert if family == "bert" else tiny_roberta)().config
    classes = {
        ("bert", "token"): BertForTokenClassification,
        ("bert", "bare"): BertModel,
        ("roberta", "token"): RobertaForTokenClassification,
        ("roberta", "bare"): RobertaModel,
    }
    torch.manual_seed(0)
    return classes[family, head](config)


def _outputs(model, inputs) -> dict[str, torch.Tensor]:
    out = model(**inputs)
    if "logits" in out:
        return {"logits": out.logits}
    return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("head", ["token", "bare"])
def test_token_classification_and_bare_encoders_train_export_and_reload(tmp_path, family, head):
    model = _encoder(family, head)
    inputs = batch(num_labels=2)
    inputs.pop("labels")
    token_labels = torch.randint(0, 2, inputs["input_ids"].shape, generator=torch.Generator().manual_seed(2))
    steps = 16
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.5, num_events=2), total_steps=steps)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        if head == "token":
            loss = model(**inputs, labels=token_labels).loss
        else:  # no head and no loss: any differentiable function of the outputs trains the adapters
            loss = model(**inputs).last_hidden_state.pow(2).mean()
        loss.backward()
        del loss  # its graph refers to the shapes before the step's surgery
        optimizer.step()
        controller.step(optimizer)
        optimizer.zero_grad()
    assert len(controller.events) == 2 and controller.density() <= 0.5 + 1e-6
    model.eval()
    with torch.no_grad():
        expected = _outputs(model, inputs)
    aptune.export(model, controller, tmp_path / "out")
    again = aptune.load(tmp_path / "out")
    assert type(again).__name__ == "Apt" + type(model).__name__
    with torch.no_grad():
        got = _outputs(again, inputs)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-4, msg=name)
    dense = _encoder(family, head)
    assert sum(p.numel() for p in again.parameters()) < sum(p.numel() for p in dense.parameters())


def test_a_weight_changed_after_export_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model, controller = _pruned(tiny_bert)
    out = tmp_path / "out"
    aptune.export(model, controller, out)
    weights = load_file(out / "model.safetensors")
    name = next(iter(weights))
    weights[name].view(-1)[0] += 1.0  # same names, shapes and dtype: only the content differs
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match=r"model\.safetensors was modified after export") as caught:
        aptune.load(out)
    assert "export the model again" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("task", "head"),
    [("text-classification", "sequence"), ("token-classification", "token"), ("feature-extraction", "bare")],
)
def test_pipelines_accept_exported_encoders_without_a_warning(tmp_path, wordpiece_tokenizer, task, head):
    import logging

    import transformers

    model = tiny_bert() if head == "sequence" else _encoder("bert", head)
    model.resize_token_embeddings(len(wordpiece_tokenizer))
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4))
    controller.set_hard_masks(_random_keep(controller, seed=7))
    controller.prune_to_masks_()
    aptune.export(model, controller, tmp_path / "out", tokenizer=wordpiece_tokenizer)
    messages: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    library_logger = logging.getLogger("transformers")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    library_logger.addHandler(handler)
    try:
        pipe = transformers.pipeline(task, model=aptune.load(tmp_path / "out"), tokenizer=wordpiece_tokenizer)
        result = pipe("the cat sat on the mat")
    finally:
        library_logger.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)
    assert result
    assert not [m for m in messages if "not supported" in m], messages

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

"""The chunked causal-LM loss equals the model's own loss, in value and gradients; the chunked evaluation
equals the model's own per-token losses and perplexity without forming the full logits."""

from __future__ import annotations

import pytest
import torch

from aptune.errors import ConfigError
from aptune.losses import chunked_causal_lm_loss, chunked_lm_eval, chunked_lm_forward, chunked_token_nll
from aptune.tasks import compute_perplexity, token_nll
from test_llama import tiny_llama


def _batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (3, 11), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt that is not counted
    labels[2, 7:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference(model, batch) -> tuple[torch.Tensor, dict]:
    # the model's own loss and gradients; the gradients are cleared afterwards
    loss = model(**batch).loss
    loss.backward()
    grads = _grads(model)
    model.zero_grad()
    return loss, grads


@pytest.mark.parametrize("chunk", [1, 5, 7, 1000])
def test_equals_the_models_loss_and_gradients(chunk):
    model = tiny_llama().train()
    batch = _batch()
    reference, expected = _reference(model, batch)

    loss = chunked_lm_forward(model, batch, chunk)
    loss.backward()
    got = _grads(model)
    assert torch.allclose(loss, reference, atol=1e-5, rtol=1e-5)
    assert expected.keys() == got.keys() and len(got) > 5
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-5, rtol=1e-4), name


def test_num_items_in_batch_divides_the_sum():
    model = tiny_llama()
    batch = _batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    hidden = model.model(**inputs).last_hidden_state
    mean = chunked_causal_lm_loss(hidden, model.lm_head, batch["labels"], 4)
    counted = int((batch["labels"][:, 1:] != -100).sum())
    summed = chunked_causal_lm_loss(hidden, model.lm_head, batch["labels"], 4, num_items_in_batch=2 * counted)
    assert torch.allclose(summed, mean / 2)
    reference = model(**batch, num_items_in_batch=2 * counted).loss
    assert torch.allclose(summed, reference, atol=1e-6)


def test_no_counted_token_gives_zero_and_bad_chunk_is_named():
    model = tiny_llama()
    hidden = torch.randn(2, 5, model.config.hidden_size, requires_grad=True)
    labels = torch.full((2, 5), -100)
    loss = chunked_causal_lm_loss(hidden, model.lm_head, labels, 3)
    loss.backward()
    assert float(loss.detach()) == 0.0 and hidden.grad is not None
    with pytest.raises(ConfigError, match="chunk_size"):
        chunked_causal_lm_loss(hidden, model.lm_head, labels, 0)


def test_trainer_uses_the_chunked_loss_with_masks_in_place(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    import aptune
    import aptune.trainer

    model = tiny_llama().train()
    controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.5, lm_loss_chunk=4))
    # soft masks, so the chunked path must run through the masked decoder like the full one
    keep = controller.select(0.5)
    controller._move_masks(keep, 0.4)
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = aptune.AptTrainer(model=model, args=args, apt_config=controller.config)
    batch = _batch()
    calls = []

    def spy(model, inputs, chunk_size, items=None):
        calls.append(chunk_size)
        return chunked_lm_forward(model, inputs, chunk_size, items)

    monkeypatch.setattr(aptune.trainer, "chunked_lm_forward", spy)
    chunked = trainer.compute_loss(model, batch)
    assert calls == [4]
    full = model(**batch).loss
    assert torch.allclose(chunked, full, atol=1e-5)


def test_works_on_a_peft_model_as_a_baseline_would_call_it():
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(tiny_llama().train(), lora)
    batch = _batch()
    reference = model(**batch).loss
    reference.backward()
    expected = _grads(model)
    model.zero_grad()
    loss = chunked_lm_forward(model, batch, 6)
    loss.backward()
    assert torch.allclose(loss, reference, atol=1e-5)
    for name, grad in expected.items():
        assert torch.allclose(_grads(model)[name], grad, atol=1e-5, rtol=1e-4), name


class _HeadSpy(torch.nn.Module):
    """Wraps an output projection and records how many tokens each call projects."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head
        self.tokens: list[int] = []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.tokens.append(hidden.shape[:-1].numel())
        return self.head(hidden)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_the_chunked_evaluation_equals_the_models_per_token_losses(chunk):
    model = tiny_llama().eval()
    batch = _batch()
    with torch.no_grad():
        out = model(**batch)
    expected = token_nll(out.logits, batch["labels"])
    loss, nll = chunked_lm_eval(model, batch, chunk)
    assert nll.shape == batch["labels"].shape and nll.dtype == torch.float32
    assert torch.allclose(nll, expected, atol=1e-5)
    assert torch.allclose(loss, out.loss, atol=1e-5)
    assert torch.equal(token_nll(nll, batch["labels"]), nll)  # already per-token losses: passed through
    # the perplexity the Trainer's metric computes is the same from either
    from transformers import EvalPrediction

    labels = batch["labels"].numpy()
    ours = compute_perplexity(EvalPrediction(predictions=nll.numpy(), label_ids=labels))
    theirs = compute_perplexity(EvalPrediction(predictions=expected.numpy(), label_ids=labels))
    assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-5)


def test_the_chunked_evaluation_never_projects_more_than_a_chunk():
    model = tiny_llama().eval()
    hidden = torch.randn(3, 11, model.config.hidden_size)
    spy = _HeadSpy(model.lm_head)
    chunked_token_nll(hidden, spy, _batch()["labels"], 4)
    assert max(spy.tokens) == 4 and sum(spy.tokens) == 3 * 10  # every shifted position, once
    with pytest.raises(ConfigError, match="chunk_size"):
        chunked_token_nll(hidden, spy, _batch()["labels"], 0)


@pytest.mark.parametrize("trainer_kind", ["apt", "baseline"])
def test_evaluation_in_the_trainers_is_chunked_and_equal(tmp_path, trainer_kind):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    import aptune
    from aptune.bench.decoder_methods import ChunkedLossTrainer

    batch = _batch()
    rows = [{k: batch[k][i].tolist() for k in batch} for i in range(3)]
    data = Dataset.from_list(rows)
    args = TrainingArguments(
        str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True, per_device_eval_batch_size=2
    )
    common = {"args": args, "eval_dataset": data, "compute_metrics": compute_perplexity}
    common["preprocess_logits_for_metrics"] = token_nll

    def build(model, chunk):
        if trainer_kind == "apt":
            config = aptune.AptConfig(target_density=1.0, lm_loss_chunk=chunk)
            return aptune.AptTrainer(model=model, apt_config=config, **common)
        return ChunkedLossTrainer(model=model, lm_loss_chunk=chunk, **common)

    reference_model = tiny_llama()
    reference = Trainer(model=reference_model, **common).evaluate()
    model = tiny_llama()
    model.load_state_dict(reference_model.state_dict())
    trainer = build(model, 4)
    spy = _HeadSpy(model.lm_head)
    model.lm_head = spy
    ours = trainer.evaluate()
    assert spy.tokens and max(spy.tokens) <= 4  # the logits of at most 4 tokens at a time
    assert ours["eval_perplexity"] == pytest.approx(reference["eval_perplexity"], rel=1e-5)
    assert ours["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5)


def test_the_calibration_pass_uses_the_chunked_loss_and_decides_the_same(monkeypatch):
    """Pruning before tuning (salience pass and damage curves) with ``lm_loss_chunk`` removes the
    same blocks as with the model's own loss, and never projects more than a chunk of tokens."""
    import aptune
    import aptune.losses
    from aptune.config import AptConfig
    from test_llama import _causal_lm_dataset

    block_loss = aptune.losses._block_loss_sum
    tokens: list[int] = []  # tokens of every projection onto the vocabulary

    def counted_block_loss(hidden, *args):
        tokens.append(hidden.shape[0])
        return block_loss(hidden, *args)

    monkeypatch.setattr(aptune.losses, "_block_loss_sum", counted_block_loss)

    data = _causal_lm_dataset(8)
    batches = [{k: torch.tensor(data[i : i + 2][k]) for k in data.column_names} for i in range(0, 8, 2)]
    kept, curves, projected = [], [], []
    for chunk in (None, 5):
        model = tiny_llama()
        tokens.clear()
        model.lm_head.register_forward_hook(lambda m, args, out: tokens.append(args[0].shape[:-1].numel()))
        config = AptConfig(target_density=0.6, pretune_density=0.6, distill=False, lm_loss_chunk=chunk)
        controller = aptune.prepare_(model, config, total_steps=40)
        record = controller.calibrate_and_prune_(batches)
        kept.append(controller.blocks.kept_ids())
        curves.append(record["damage_curves"])
        projected.append(list(tokens))
    assert all(torch.equal(a, b) for a, b in zip(*kept, strict=True))
    assert _nested_close(curves[0], curves[1])
    assert max(projected[0]) == 2 * 12  # the model's own loss projects a whole batch at once ...
    assert max(projected[1]) == 5  # ... the chunked one never more than a chunk


def _nested_close(a, b) -> bool:
    """Nested lists / dicts of numbers equal within float tolerance."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_nested_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_nested_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-6)
    return a == b


def test_a_model_wrapped_for_data_parallelism_runs_through_its_wrapper(monkeypatch):
    # DataParallel stands for DistributedDataParallel: the same path (the wrapper's forward must run,
    # so that DDP synchronises the gradients), without a process group in the test
    model = tiny_llama().train()
    batch = _batch()
    reference, expected = _reference(model, batch)
    wrapper = torch.nn.DataParallel(model)
    calls = []
    original = torch.nn.DataParallel.forward

    def seen(self, *args, **kwargs):
        calls.append(kwargs.get("logits_to_keep"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.DataParallel, "forward", seen)
    loss = chunked_lm_forward(wrapper, batch, 4)
    loss.backward()
    # the wrapper saw the forward and asked for no logits
    assert len(calls) == 1 and calls[0].numel() == 0
    torch.testing.assert_close(loss, reference)
    got = _grads(model)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6)

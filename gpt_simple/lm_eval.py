"""The lm-evaluation-harness model ``gpt-simple`` (the ``[lm-eval]`` extra).

``generate_until``, ``loglikelihood`` and ``loglikelihood_rolling`` on top of the engine
(:func:`gpt_simple.generate_records` and :func:`gpt_simple.score`, so batching, stops, seeds,
the tokenization and the rolling windows are the ones docs/evaluating.md describes), on any
backend and checkpoint gpt-simple runs::

    python -m gpt_simple.lm_eval run --model gpt-simple \\
        --model_args checkpoint=runs/exp1,dtype=fp32,backend=torch --tasks hellaswag

Importing this module registers the model in lm-eval's own registry
(``lm_eval.api.registry.register_model``); from Python, ``import gpt_simple.lm_eval`` and then
``lm_eval.simple_evaluate(model="gpt-simple", model_args=...)``. lm-eval (0.4.13) finds models
only in its own table, so its bare ``lm_eval`` command cannot know ours: ``python -m
gpt_simple.lm_eval`` is that command with ``gpt-simple`` registered first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from gpt_simple_core.api import generate_records, load_for_inference, score
from gpt_simple_core.errors import GenerationError

#: lm-eval's own default for ``max_gen_toks``.
DEFAULT_MAX_GEN_TOKS = 256


@register_model("gpt-simple", "gpt_simple")
class GptSimpleLM(LM):
    """A gpt-simple checkpoint as an lm-eval model. ``model_args``: ``checkpoint`` (default
    ``builtin:default``), ``dtype``, ``backend``, ``tokenizer``, ``seed`` (the run seed of
    sampled generations, default 0); lm-eval's own ``--device`` and ``--batch_size`` set the
    device and our batch size (``auto``: the engine's own choice)."""

    def __init__(
        self,
        checkpoint: str = "builtin:default",
        dtype: str | None = None,
        backend: str | None = None,
        device: str | None = None,
        tokenizer: str | None = None,
        seed: int | str = 0,
        batch_size: int | str | None = None,
        max_batch_size: int | str | None = None,
        **_lm_eval_options: Any,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, _ = load_for_inference(
            str(checkpoint), device=device, dtype=dtype, backend=backend, tokenizer_path=tokenizer
        )
        self.seed = int(seed)
        self.batch_size = _size(batch_size) or _size(max_batch_size)

    # Scoring -------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list:
        """(sum logprob of the continuation, whether it is the greedy one) per request."""
        pairs = [{"context": r.args[0], "continuation": r.args[1]} for r in requests]
        results = []
        scored = _checked(score(self.model, self.tokenizer, pairs))
        for request, record in zip(requests, scored, strict=True):
            result = (record["score"]["logprob"], record["score"]["is_greedy"])
            self.cache_hook.add_partial("loglikelihood", request.args, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list:
        """The log-likelihood of each text, over windows of the model's context."""
        texts = [{"text": r.args[0]} for r in requests]
        results = []
        scored = _checked(score(self.model, self.tokenizer, texts))
        for request, record in zip(requests, scored, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, record["score"])
            results.append(record["score"]["logprob"])
        return results

    # Generation ----------------------------------------------------------------------------
    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Each context's completion, cut at the first of its ``until`` strings. Requests with
        the same generation arguments run as one batch through the engine."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(
                i
            )
        out: list[str] = [""] * len(requests)
        for members in groups.values():
            options = self._generation_options(requests[members[0]].args[1])
            contexts = [requests[i].args[0] for i in members]
            records = generate_records(self.model, self.tokenizer, contexts, **options)
            for i, record in zip(members, _checked(records), strict=True):
                out[i] = record["completion"]
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _generation_options(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """lm-eval's ``gen_kwargs`` as our keyword arguments; unknown ones are refused rather
        than silently ignored."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None)
        options: dict[str, Any] = {
            "max_new_tokens": int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
            "stop": [until] if isinstance(until, str) else list(until or []),
            "seed": self.seed,
            "batch_size": self.batch_size,
        }
        temperature = float(kwargs.pop("temperature", 0.0))
        do_sample = bool(kwargs.pop("do_sample", temperature > 0))
        options["do_sample"] = do_sample and temperature != 0
        if options["do_sample"]:
            options["temperature"] = temperature
        for key in ("top_p", "top_k"):
            if key in kwargs:
                options[key] = kwargs.pop(key)
        if kwargs:
            raise GenerationError(f"gen_kwargs gpt-simple cannot honour: {sorted(kwargs)}")
        return options

    @property
    def tokenizer_name(self) -> str:
        return "gpt-simple"


def _size(value: int | str | None) -> int | None:
    """lm-eval's batch size argument: a number, ``auto`` (None: our engine decides) or None."""
    if value is None or str(value).startswith("auto"):
        return None
    return int(value)


def _checked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records``, or the first record error raised: lm-eval has no place for a failed one."""
    for record in records:
        if "error" in record:
            raise GenerationError(f"gpt-simple: {record['error']['message']}")
    return records


def main() -> None:
    """lm-eval's command line, with ``gpt-simple`` registered (this module imported)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()

"""litellm internals the service layer relies on (see duo/compat/__init__.py)."""
from __future__ import annotations

from duo.compat import register


# ---- litellm -------------------------------------------------------------------------------------
def litellm_response_cost(resp) -> float | None:
    """The price litellm already computed for a response on its way out, if it did."""
    hidden = getattr(resp, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    return None if cost is None else float(cost)


@register("litellm ModelResponse._hidden_params['response_cost']", "a reply's price without pricing it again",
          "duo/service/client.py: Service.reply_of")
def _check_litellm_hidden_cost():
    from litellm import ModelResponse

    resp = ModelResponse()
    assert isinstance(getattr(resp, "_hidden_params", None), dict)


def litellm_logging_worker():
    """litellm's background logging worker (it finishes a batch's bookkeeping after the call returns)."""
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    return GLOBAL_LOGGING_WORKER


@register("litellm.litellm_core_utils.logging_worker.GLOBAL_LOGGING_WORKER",
          "let litellm's own bookkeeping finish before a Service's event loop closes",
          "duo/service/call_loop.py")
def _check_litellm_logging_worker():
    import asyncio

    assert asyncio.iscoroutinefunction(litellm_logging_worker().flush)


def litellm_batch_cost(usage: dict, model: str) -> tuple[float, float]:
    """(prompt USD, completion USD) of one batch-API answer at the model's batch price."""
    from litellm.cost_calculator import batch_cost_calculator
    from litellm.types.utils import Usage

    return batch_cost_calculator(Usage(**usage), model)


@register("litellm.cost_calculator.batch_cost_calculator", "the batch-API price of an answer",
          "duo/service/pricing.py, duo/service/batch.py")
def _check_litellm_batch_cost():
    prompt, completion = litellm_batch_cost({"prompt_tokens": 1000, "completion_tokens": 1000,
                                             "total_tokens": 2000}, "openai/gpt-4o")
    assert prompt > 0 and completion > 0

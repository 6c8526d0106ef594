"""Prices from litellm's bundled table (no network): what a number of tokens costs at a model's live or
batch price, and the most a request can cost before it is sent (its prompt tokens, counted with the
model's tokenizer as litellm knows it, plus all of its max_tokens)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=64)
def priced(model: str) -> bool:
    """Whether litellm's table has a token price for `model` (an unknown model prices at 0 in some of
    litellm's calculators: that must read as unknown, never as free)."""
    import litellm

    try:
        info = litellm.get_model_info(model=model)
    except Exception:
        return False
    return info.get("input_cost_per_token") is not None or info.get("output_cost_per_token") is not None


def usd(model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float | None:
    """USD of these tokens at the live price, or the batch price (litellm's `*_batches` entries, half
    the live price where it lists none); None where litellm knows no price."""
    if not priced(model):
        return None
    import litellm

    from duo.compat import service as compat

    if batch:
        prompt, completion = compat.litellm_batch_cost({"prompt_tokens": prompt_tokens,
                                                        "completion_tokens": completion_tokens,
                                                        "total_tokens": prompt_tokens + completion_tokens}, model)
    else:
        prompt, completion = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens,
                                                    completion_tokens=completion_tokens)
    return float(prompt) + float(completion)


def prompt_tokens(model: str, messages: list) -> int:
    """Prompt tokens of `messages` as the provider counts them (litellm's token_counter: the model's
    tokenizer where litellm bundles it, tiktoken's otherwise, with the chat format's overhead)."""
    import litellm

    try:
        return int(litellm.token_counter(model=model, messages=messages))
    except Exception:  # no tokenizer offline: 3 characters a token errs on the dear side
        return sum(len(str(m.get("content", ""))) for m in messages) // 3 + 8 * len(messages)


def worst_case(model: str, messages: list, max_tokens: int, batch: bool = False) -> float | None:
    """The most one request can cost: its prompt plus every token it may generate."""
    if not priced(model):
        return None
    return usd(model, prompt_tokens(model, messages), max_tokens, batch)

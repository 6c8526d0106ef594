"""An application's own requests passed on to the service model (`duo record`): `service.model` and its
endpoint resolved by litellm, keys from the environment only, the same requests-/tokens-per-minute
limits, timeout and retries (transient errors, Retry-After honoured) as every service call; but nothing
journaled or replayed (an app that asks twice expects two answers), nothing truncated, no duo budget
(it is the app's spend), and a provider error handed back with the provider's status and body.

Two paths. A provider that speaks the OpenAI API itself (`openai/...`, `hosted_vllm/...`, the `local`
llama-server) gets the app's request body as it is, over one pooled connection, and the app gets the
provider's bytes back: nothing to translate, and litellm's per-call work (~3-6 ms of CPU here: request
building, logging objects, cost lookup) would otherwise be added to every request and saturate the
proxy's one core at 32 clients (make bench SECTION=record measures both paths). Every other provider
(Anthropic, Gemini, Bedrock, ...) goes through `litellm.acompletion`, which translates.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
from dataclasses import dataclass
from typing import AsyncIterator

import click
import orjson

from duo.service import errors
from duo.service.client import Service
from duo.service.limits import RateLimiter

# OpenAI chat-completion parameters litellm takes by name; anything else the app sends travels in
# `extra_body` (a provider's own options such as vLLM's top_k), so no field of a request can steer
# litellm itself (api_base, mock_response, ...).
PARAMS = {"temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
          "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "seed", "response_format",
          "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "modalities", "audio", "prediction",
          "service_tier", "store", "web_search_options", "verbosity", "functions", "function_call"}
OWN = {"model", "messages", "stream", "stream_options"}  # set by the relay itself
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "auth", "authorization", "bearer",
                "credential", "credentials"}
# litellm providers whose endpoint is an OpenAI-compatible /chat/completions, and the variable litellm
# reads their key from
PASSTHROUGH_KEYS = {"openai": "OPENAI_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY"}


def secret_name(name: str) -> bool:
    """A request field that may hold a credential (api_key, x-auth-token, ...; not max_tokens): never
    forwarded, never recorded."""
    return bool(SECRET_WORDS & set(re.split(r"[^a-z0-9]+", name.lower())))


def params_of(body: dict) -> dict:
    """The request's parameters as recorded and forwarded: everything but the messages, the model name
    and the streaming switches, less any field named like a credential."""
    return {k: v for k, v in body.items() if k not in OWN and not secret_name(k)}


class ProviderError(Exception):
    """The provider's final answer to a request that failed: its HTTP status and an OpenAI-style error
    body (keys scrubbed)."""

    def __init__(self, status: int, body: dict):
        super().__init__(body["error"].get("message"))
        self.status, self.body = status, body

    @classmethod
    def of(cls, exc: Exception) -> "ProviderError":
        code = errors.status(exc)
        if code is None:  # no HTTP answer at all: a gateway's view of it
            code = 504 if "timeout" in type(exc).__name__.lower() else 502
        text = getattr(exc, "text", None)
        resp = getattr(exc, "response", None)
        if text is None and getattr(resp, "status_code", None) == code:
            text = getattr(resp, "text", None)
        error = None
        try:
            error = json.loads(errors.scrub(text)).get("error") if text else None
        except (ValueError, AttributeError, TypeError):
            pass
        if not isinstance(error, dict) or "message" not in error:
            error = {"message": errors.scrub(f"{type(exc).__name__}: {exc}")[:2000], "type": "provider_error",
                     "param": None, "code": code}
        return cls(code, {"error": error})


class Upstream(Exception):
    """A pass-through call that did not answer 200 (or did not answer): read like a litellm exception by
    duo/service/errors.py (status_code, headers, text)."""

    def __init__(self, status_code: int, text: str, headers=None):
        super().__init__(text[:500])
        self.status_code, self.text, self.headers = status_code, text, headers or {}


@dataclass
class Answer:
    data: dict   # the chat.completion object (what is recorded)
    raw: bytes   # what the app gets (on the pass-through path, the provider's own bytes)


class Relay:
    """Create and use on one event loop (`async with Relay(...)`), inside an entered Service (which
    starts llama-server for `local`)."""

    def __init__(self, svc: Service, *, concurrency: int = 64, rpm: int = 0, tpm: int = 0, passthrough: bool = True):
        import litellm

        self.svc = svc
        self.concurrency = concurrency
        self.limiter = RateLimiter(rpm, tpm)
        litellm.drop_params = True
        litellm.suppress_debug_info = True
        try:
            name, provider, dynamic_key, api_base = litellm.get_llm_provider(svc.model, api_base=svc.api_base)
        except Exception as exc:  # litellm's BadRequestError for a provider it does not know
            raise click.ClickException(f"params.yaml: service.model {svc.spec!r}: litellm cannot tell its provider "
                                       f"({errors.scrub(str(exc))[:200]})") from None
        self.upstream_model = name
        self.passthrough = passthrough and (svc.is_local or provider in PASSTHROUGH_KEYS)
        key = "no-key" if svc.is_local else os.environ.get(PASSTHROUGH_KEYS.get(provider, ""), dynamic_key)
        if provider == "openai" and not api_base:  # where litellm looks, in its order
            api_base = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
        self.url = (api_base or "https://api.openai.com/v1").rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.priced = self._priced()
        self._sem: asyncio.Semaphore | None = None
        self._session = None

    def _priced(self) -> bool:
        import litellm

        if self.svc.is_local:
            return False
        try:
            litellm.cost_per_token(model=self.svc.model, prompt_tokens=1, completion_tokens=1)
            return True
        except Exception:  # litellm has no price for it: tokens are recorded, cost is not
            return False

    async def __aenter__(self) -> "Relay":
        import aiohttp

        self._sem = asyncio.Semaphore(self.concurrency)
        if self.passthrough:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session:
            await self._session.close()

    def cost(self, usage: dict | None) -> float | None:
        import litellm

        if self.svc.is_local:
            return 0.0
        if not self.priced or not usage:
            return None
        prompt, completion = litellm.cost_per_token(model=self.svc.model, prompt_tokens=usage.get("prompt_tokens") or 0,
                                                    completion_tokens=usage.get("completion_tokens") or 0)
        return round(prompt + completion, 9)

    @staticmethod
    def estimate(body: dict) -> int:
        chars = sum(len(str(m.get("content", ""))) for m in body["messages"] if isinstance(m, dict))
        return chars // 4 + int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)

    async def _retrying(self, attempt_fn, estimate: int):
        """attempt_fn's result; transient errors retried with jittered backoff (Retry-After first) up to
        service.max_retries; the last error as a ProviderError."""
        attempt = 0
        while True:
            await self.limiter.acquire(estimate)
            try:
                return await attempt_fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attempt >= self.svc.max_retries or not errors.transient(exc):
                    raise ProviderError.of(exc) from None
                attempt += 1
                wait = errors.retry_after(exc)
                if wait is None:
                    wait = min(60.0, self.svc.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random())
                await asyncio.sleep(wait)

    # -- the pass-through path ------------------------------------------------------------------------
    def _body(self, body: dict, stream: bool) -> bytes:
        out = params_of(body) | {"model": self.upstream_model, "messages": body["messages"]}
        if stream:
            out |= {"stream": True, "stream_options": {"include_usage": True}}
        return orjson.dumps(out)

    async def _post(self, data: bytes, stream: bool):
        import aiohttp

        timeout = aiohttp.ClientTimeout(sock_read=self.svc.timeout_s, sock_connect=30) if stream else \
            aiohttp.ClientTimeout(total=self.svc.timeout_s)
        try:
            resp = await self._session.post(self.url, data=data, headers=self.headers, timeout=timeout)
        except asyncio.TimeoutError:
            raise Upstream(504, f"the provider did not answer within {self.svc.timeout_s} s") from None
        except aiohttp.ClientError as exc:
            raise Upstream(502, f"cannot reach the provider at {self.url}: {exc}") from None
        if resp.status != 200:
            try:
                text = (await resp.read()).decode("utf-8", "replace")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                text = ""
            resp.release()
            raise Upstream(resp.status, text, resp.headers)
        return resp

    async def _passthrough(self, data: bytes) -> Answer:
        import aiohttp

        resp = await self._post(data, stream=False)
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise Upstream(502, f"the provider's reply broke off: {exc}") from None
        finally:
            resp.release()
        try:
            return Answer(orjson.loads(raw), raw)
        except ValueError:
            raise Upstream(502, f"the provider's reply is not JSON: {raw[:200]!r}") from None

    # -- the litellm path -----------------------------------------------------------------------------
    def kwargs(self, body: dict) -> dict:
        svc = self.svc
        params = params_of(body)
        out = {k: v for k, v in params.items() if k in PARAMS}
        extra = {k: v for k, v in params.items() if k not in PARAMS}
        if extra:
            out["extra_body"] = extra
        out.update(model=svc.model, messages=body["messages"], timeout=svc.timeout_s, num_retries=0, max_retries=0)
        if svc.api_base:
            out["api_base"] = svc.api_base
        if svc.is_local:
            out["api_key"] = "no-key"
        return out

    @staticmethod
    def _plain(obj) -> dict:
        data = obj.model_dump(exclude_none=True)
        for choice in data.get("choices", ()):  # litellm's own bookkeeping, not the provider's answer
            choice.pop("provider_specific_fields", None)
            for part in ("message", "delta"):
                if isinstance(choice.get(part), dict):
                    choice[part].pop("provider_specific_fields", None)
        return data

    async def _litellm(self, kwargs: dict):
        import litellm

        return await litellm.acompletion(**kwargs)

    # -- what the recorder calls ----------------------------------------------------------------------
    async def complete(self, body: dict) -> Answer:
        """The provider's reply to a non-streamed request; raises ProviderError."""
        async with self._sem:
            if self.passthrough:
                data = self._body(body, stream=False)
                return await self._retrying(lambda: self._passthrough(data), self.estimate(body))
            kwargs = self.kwargs(body)
            resp = await self._retrying(lambda: self._litellm(kwargs), self.estimate(body))
            data = self._plain(resp)
            return Answer(data, json.dumps(data).encode())

    async def stream(self, body: dict) -> AsyncIterator[tuple[bytes, dict]]:
        """(server-sent event, chunk) of a streamed request, the usage chunk last; no [DONE] (the
        recorder sends it once the exchange is on disk). Raises ProviderError before the first chunk
        or from inside the stream."""
        async with self._sem:
            if self.passthrough:
                data = self._body(body, stream=True)
                resp = await self._retrying(lambda: self._post(data, stream=True), self.estimate(body))
                try:
                    async for line in resp.content:
                        line = line.strip()
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            break
                        chunk = orjson.loads(payload)
                        if "error" in chunk and not chunk.get("choices"):
                            raise Upstream(502, payload.decode("utf-8", "replace"))
                        yield b"data: " + payload + b"\n\n", chunk
                except asyncio.CancelledError:
                    raise
                except ProviderError:
                    raise
                except Exception as exc:
                    raise ProviderError.of(exc) from None
                finally:
                    resp.release()
                return
            kwargs = self.kwargs(body) | {"stream": True, "stream_options": {"include_usage": True}}
            response = await self._retrying(lambda: self._litellm(kwargs), self.estimate(body))
            try:
                async for chunk in response:
                    data = self._plain(chunk)
                    yield b"data: " + json.dumps(data).encode() + b"\n\n", data
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise ProviderError.of(exc) from None


def assemble(chunks: list[dict]) -> dict:
    """A streamed reply put back together as a chat.completion (first choice): content, tool calls,
    finish reason, usage."""
    message: dict = {"role": "assistant"}
    content: list[str] = []
    calls: dict[int, dict] = {}
    finish, usage, model = None, None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        model = chunk.get("model") or model
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                               "function": {"name": "", "arguments": ""}})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    message["content"] = "".join(content) if content or not calls else None
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {"object": "chat.completion", "model": model, "choices": [{"index": 0, "message": message,
                                                                       "finish_reason": finish}], "usage": usage}

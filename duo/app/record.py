"""`duo record`: an OpenAI-compatible recording proxy. Point the application's base URL here; each
request goes on to the service LLM (`service.model`, through duo/service/relay.py: limits, retries,
keys from the environment only) and each exchange is appended to data/traffic/<date>.jsonl
(duo/app/traffic.py: the full messages, parameters, reply, model, usage, latency, error; never a key).

Endpoints: POST /v1/chat/completions (with and without `"stream": true`), GET /v1/models, GET /health.
A malformed request gets 400 with a message and is not forwarded; a provider error reaches the app with
the provider's status and OpenAI-style error body, and is recorded as an error.

Run: duo record [--host H] [--port P]   (or: make record; env RECORD_HOST, RECORD_PORT, RECORD_API_KEY)
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import os
import signal
import random
import time
from pathlib import Path

import click
import orjson

from duo.app import traffic
from duo.app.serve import LOOPBACK, check_port

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
NUMBERS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "presence_penalty": (-2.0, 2.0),
           "frequency_penalty": (-2.0, 2.0)}
COUNTS = ("max_tokens", "max_completion_tokens", "n")


def problem(body) -> str | None:
    """Why a chat-completions request cannot be forwarded, or None."""
    if not isinstance(body, dict):
        return f"the request body must be a JSON object, got {type(body).__name__}"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {\"role\", \"content\"} objects"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages[{i}] must be an object, got {type(msg).__name__}"
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}"
        if content is None and not (role == "assistant" and (msg.get("tool_calls") or msg.get("function_call"))):
            return f"messages[{i}].content is missing"
        if content is not None and not isinstance(content, (str, list)):
            return f"messages[{i}].content must be text or a list of content parts, got {type(content).__name__}"
    if "stream" in body and not isinstance(body["stream"], bool):
        return f"'stream' must be true or false, got {body['stream']!r}"
    for name, (lo, hi) in NUMBERS.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi):
            return f"'{name}' must be a number from {lo} to {hi}, got {value!r}"
    for name in COUNTS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"'{name}' must be a whole number >= 1, got {value!r}"
    return None


def error_body(message: str, kind: str = "invalid_request_error", code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Recorder:
    """The proxy's handlers around one Relay and one TrafficLog."""

    def __init__(self, relay, log: traffic.TrafficLog, key: str | None):
        self.relay, self.log, self.key = relay, log, key
        self.model = relay.svc.spec
        self._ids = random.Random(os.urandom(16))  # ids without a getrandom(2) per request

    def _exchange(self, body: dict, at: float) -> dict:
        from duo.service.relay import params_of

        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"
        return {"id": f"{self._ids.getrandbits(128):032x}", "at": stamp, "messages": body["messages"],
                "params": params_of(body), "stream": bool(body.get("stream")), "requested_model": body.get("model"),
                "model": self.model}

    def _finish(self, exchange: dict, at: float, start: float, data: dict | None = None, err=None) -> None:
        """Complete the exchange and append it: before the app gets the reply."""
        exchange["latency_ms"] = round((time.monotonic() - start) * 1000, 1)
        if err is not None:
            exchange.update(reply=None, finish_reason=None, usage=None, cost_usd=None, status=err.status,
                            error={"status": err.status, "message": err.body["error"].get("message")})
        else:
            choice = (data.get("choices") or [{}])[0]
            usage = data.get("usage")
            exchange.update(reply=choice.get("message"), finish_reason=choice.get("finish_reason"),
                            usage={k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
                            if usage else None, cost_usd=self.relay.cost(usage), status=200, error=None)
        self.log.append(exchange, at)

    def authorized(self, request) -> bool:
        if not self.key:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode())

    async def chat(self, request):
        from aiohttp import web

        from duo.service.relay import ProviderError

        if not self.authorized(request):
            return web.json_response(error_body("invalid or missing API key (Authorization: Bearer <RECORD_API_KEY>)",
                                                "authentication_error"), status=401)
        at, start = time.time(), time.monotonic()
        try:
            body = orjson.loads(await request.read())
        except ValueError as exc:
            return web.json_response(error_body(f"the request body is not JSON ({exc})"), status=400)
        why = problem(body)
        if why:
            return web.json_response(error_body(why), status=400)
        exchange = self._exchange(body, at)
        if body.get("stream"):
            return await self._stream(request, body, exchange, at, start)
        try:
            answer = await self.relay.complete(body)
        except ProviderError as err:
            self._finish(exchange, at, start, err=err)
            return web.json_response(err.body, status=err.status)
        self._finish(exchange, at, start, answer.data)  # on disk before the app has it
        return web.Response(body=answer.raw, content_type="application/json")

    async def _stream(self, request, body: dict, exchange: dict, at: float, start: float):
        from aiohttp import web

        from duo.service.relay import ProviderError, assemble

        events = self.relay.stream(body)
        try:
            first = await events.__anext__()
        except ProviderError as err:
            self._finish(exchange, at, start, err=err)
            return web.json_response(err.body, status=err.status)
        except StopAsyncIteration:
            first = None
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        seen: list[dict] = []

        async def send(event: bytes, chunk: dict) -> None:
            seen.append(chunk)
            if chunk.get("choices") or usage_wanted:  # else: the usage chunk the recorder asked for
                await resp.write(event)

        try:
            if first is not None:
                await send(*first)
                async for event, chunk in events:
                    await send(event, chunk)
        except ProviderError as err:
            self._finish(exchange, at, start, err=err)
            await resp.write(b"data: " + json.dumps(err.body).encode() + b"\n\n")
            return resp
        except (ConnectionResetError, asyncio.CancelledError):
            # the app left mid-stream: recorded, but as an exchange it did not see finish
            self._finish(exchange, at, start, err=ProviderError(499, error_body("the client closed the connection")))
            raise
        if seen:
            self._finish(exchange, at, start, assemble(seen))
        else:
            self._finish(exchange, at, start, err=ProviderError(502, error_body("the provider sent no chunk")))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(self, request):
        from aiohttp import web

        if not self.authorized(request):
            return web.json_response(error_body("invalid or missing API key", "authentication_error"), status=401)
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "duo-record"}]})

    @staticmethod
    async def health(_request):
        from aiohttp import web

        return web.json_response({"status": "ok"})

    @staticmethod
    async def not_found(request):
        from aiohttp import web

        return web.json_response(error_body(f"no route {request.method} {request.path} (duo record serves "
                                            f"/v1/chat/completions and /v1/models)"), status=404)

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        return app


async def _run(make_recorder, host: str, port: int, on_ready) -> None:
    from aiohttp import web

    recorder = make_recorder()
    await recorder.relay.__aenter__()
    runner = web.AppRunner(recorder.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    on_ready()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await recorder.relay.__aexit__(None, None, None)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, envvar="RECORD_HOST",
              help="Interface to listen on (env RECORD_HOST); another than loopback needs RECORD_API_KEY.")
@click.option("--port", default=8100, show_default=True, envvar="RECORD_PORT", type=click.IntRange(1, 65535),
              help="Port (env RECORD_PORT).")
@click.option("--concurrency", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Requests in flight to the provider at once (the app's, not service.concurrency).")
@click.option("--traffic-dir", default=str(traffic.TRAFFIC_DIR), show_default=True, type=click.Path(path_type=Path),
              help="Where the exchanges go, one file per UTC day.")
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              help="service.* (model, api_base, timeout_s, max_retries, rpm, tpm, n_ctx) from here.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback host without RECORD_API_KEY.")
@click.option("--via-litellm", is_flag=True,
              help="Send OpenAI-compatible providers' requests through litellm too (slower; for comparison).")
def main(host: str, port: int, concurrency: int, traffic_dir: Path, params_path: str, insecure: bool,
         via_litellm: bool) -> None:
    """Record the application's traffic: an OpenAI-compatible proxy to the service LLM (Ctrl-C stops it).

    RECORD_API_KEY (environment only) makes every request need `Authorization: Bearer <key>`; the
    provider's own key comes from its usual variable (OPENAI_API_KEY, ...), never from the app."""
    from duo import params as params_mod
    from duo import service
    from duo.service.relay import Relay

    key = os.environ.get("RECORD_API_KEY") or None
    if host not in LOOPBACK and not key and not insecure:
        raise click.ClickException(f"refusing to listen on {host} without a key: anyone on the network could spend "
                                   f"your provider's credit; set RECORD_API_KEY (clients send it as a Bearer "
                                   f"token) or pass --insecure")
    p = params_mod.load(params_path).service
    check_port(host, port)
    # one request at a time per app request: no batch API, and the app's own model choice is service.model
    svc = service.from_params(dataclasses.replace(p, batch=False))
    log = traffic.TrafficLog(traffic_dir)
    try:
        with svc:
            relay = Relay(svc, concurrency=concurrency, rpm=p.rpm, tpm=p.tpm, passthrough=not via_litellm)

            def ready() -> None:
                click.echo(f"record: http://{host}:{port}/v1 -> {svc.spec}"
                           f"{f' at {svc.api_base}' if svc.api_base and not svc.is_local else ''}"
                           f"{'' if relay.passthrough else ' (through litellm)'}; exchanges -> "
                           f"{traffic_dir}/<date>.jsonl; {'API key required' if key else 'no API key'} (Ctrl-C stops)",
                           err=False)

            asyncio.run(_run(lambda: Recorder(relay, log, key), host, port, ready))
    finally:
        log.close()
        click.echo(f"record: {log.appended} exchanges recorded")

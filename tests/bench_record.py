"""`duo record` under load for `make bench`: the latency the recording proxy adds per request.

Three processes, as in production: the loopback provider (tests/fake_provider.py, answering each call
after 200 ms), the proxy (`duo record`, the real command, provider key in its environment), and the
clients (this process: asyncio + aiohttp, one connection pool per path). Every round sends the same
requests straight to the provider and through the proxy, interleaved, so both paths see the same
machine load; the added latency is (proxy-path percentile - direct-path percentile). At 1 and 32
concurrent clients, non-streamed; at 1 client also streamed (time to the last byte). The 32 clients
start spread over one provider latency, so the load is steady (each sends its next request when its
last one is answered); `c32_burst` starts them together, so that (against a provider of constant
latency) all 32 requests land at once every round: the worst case, where the proxy's per-request CPU
adds up. Errors are
counted, and every proxied request must be in data/traffic/ when the proxy stops (`recorded_all`). The
machine's load average is recorded with each case (other jobs share these cores). Measured twice: the
default (an OpenAI-compatible provider gets the request passed through, `record.*`) and with every
request through litellm (`record.litellm.*`, the path any other provider takes).

Run: python -m tests.bench record
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LATENCY_S = 0.2
REPLY = "The router resets when you hold the button for ten seconds."


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _round(session, url: str, clients: int, per_client: int, stream: bool, stagger: bool = False
                 ) -> tuple[list[float], int]:
    body = {"model": "app-model", "max_tokens": 64, "temperature": 0.2, "stream": stream,
            "messages": [{"role": "system", "content": "You are ACME's support bot. One sentence."},
                         {"role": "user", "content": "How do I reset the router?"}]}
    data = json.dumps(body).encode()
    latencies: list[float] = []
    errors = 0

    async def client(k: int) -> None:
        nonlocal errors
        if stagger:  # spread over one provider latency: a steady load, not 32 requests landing at once
            await asyncio.sleep(LATENCY_S * k / clients)
        for _ in range(per_client):
            start = time.perf_counter()
            try:
                async with session.post(url + "/chat/completions", data=data,
                                        headers={"Content-Type": "application/json",
                                                 "Authorization": "Bearer app"}) as resp:
                    payload = await resp.read()
                    ok = resp.status == 200 and (b"[DONE]" in payload if stream else b'"choices"' in payload)
            except Exception:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, errors


async def _measure(direct: str, proxy: str, clients: int, rounds: int, per_client: int, stream: bool,
                   stagger: bool = False) -> dict:
    import aiohttp

    paths = {"direct": direct, "proxy": proxy}
    got = {name: [] for name in paths}
    errors = {name: 0 for name in paths}
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 8)) for name in paths}
    try:
        for name, url in paths.items():  # warm-up: connections, litellm's first call
            await _round(sessions[name], url, clients, 2, stream)
        for r in range(rounds):
            for name in (("direct", "proxy") if r % 2 == 0 else ("proxy", "direct")):
                lat, err = await _round(sessions[name], paths[name], clients, per_client, stream, stagger)
                got[name] += lat
                errors[name] += err
    finally:
        for session in sessions.values():
            await session.close()
    out = {"requests": len(got["proxy"]) + errors["proxy"], "errors": errors["proxy"],
           "direct_errors": errors["direct"]}
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        d, p = _pct(got["direct"], q), _pct(got["proxy"], q)
        out[f"direct_{label}_ms"] = round(d * 1000, 2)
        out[f"proxy_{label}_ms"] = round(p * 1000, 2)
        out[f"added_{label}_ms"] = round((p - d) * 1000, 2)
    out["added_mean_ms"] = round((statistics.mean(got["proxy"]) - statistics.mean(got["direct"])) * 1000, 2)
    return out


def _proxy_figures(direct: str, prefix: str, extra: list[str], cases) -> dict:
    """Start `duo record` (with `extra` arguments) in front of `direct`, run the cases, stop it, count
    what it recorded."""
    from duo.llamacpp import llama_server
    from duo.app import traffic

    work = Path(tempfile.mkdtemp(prefix="duo-bench-record-"))
    (work / "params.yaml").write_text(f"service:\n  model: openai/upstream\n  api_base: {direct}\n")
    port = llama_server.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-bench-provider-key"}
    proxy = subprocess.Popen([sys.executable, "-m", "duo.cli", "record", "--port", str(port), *extra], cwd=work,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    figures: dict = {}
    sent = 0
    try:
        line = proxy.stdout.readline()
        if not line.startswith("record: "):
            raise RuntimeError(f"duo record did not start: {line}{proxy.stdout.read()[-2000:]}")
        for clients, rounds, per_client, stream, tag in cases:
            figures[f"{prefix}.{tag}.load_avg_1m"] = round(os.getloadavg()[0], 2)
            got = asyncio.run(_measure(direct, f"http://127.0.0.1:{port}/v1", clients, rounds, per_client, stream,
                                       stagger=not tag.endswith("_burst")))
            sent += got["requests"] + 2 * clients  # + warm-up
            for key, value in got.items():
                figures[f"{prefix}.{tag}.{key}"] = value
    finally:
        proxy.send_signal(signal.SIGINT)
        proxy.communicate(timeout=60)
    recorded = sum(1 for path in traffic.files(work / "data" / "traffic") for _ in traffic.read(path))
    figures[f"{prefix}.recorded_all"] = recorded == sent
    return figures


def bench_record() -> dict:
    provider = subprocess.Popen([sys.executable, "-m", "tests.fake_provider", str(LATENCY_S), REPLY], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    direct = provider.stdout.readline().strip()
    figures: dict = {"record.provider_latency_ms": LATENCY_S * 1000,
                     "record.client": "aiohttp (asyncio), one pool per path, direct and proxy paths interleaved per round"}
    try:
        # the default: OpenAI-compatible providers pass through
        figures |= _proxy_figures(direct, "record", [], ((1, 10, 15, False, "c1"), (32, 10, 4, False, "c32"),
                                                         (32, 6, 3, False, "c32_burst"), (1, 6, 10, True, "c1_stream")))
        # every request through litellm (what any other provider takes): why the default passes through
        figures |= _proxy_figures(direct, "record.litellm", ["--via-litellm"],
                                  ((1, 6, 10, False, "c1"), (32, 6, 3, False, "c32")))
    finally:
        provider.stdin.close()
        provider.wait(timeout=10)
    return figures

"""A real loopback HTTP server speaking the OpenAI chat-completions API: the only stand-in in the
tests, for the remote provider that cannot run here. Replies are scripted per test."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeProvider:
    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[tuple[int, object, dict]] = []  # (status, body or text, headers)
        self.default = (200, "ok", {})
        self.delay_s = 0.0
        self.delays: list[float] = []  # per-request delays, consumed in order, before delay_s applies
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with provider.lock:
                    provider.requests.append({"body": body, "headers": dict(self.headers)})
                    status, reply, headers = provider.script.pop(0) if provider.script else provider.default
                    delay = provider.delays.pop(0) if provider.delays else provider.delay_s
                if delay:
                    time.sleep(delay)
                if status != 200:
                    self._send(status, {"error": {"message": str(reply), "type": "error", "code": status}}, headers)
                    return
                text = reply(body) if callable(reply) else reply
                self._send(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}, headers)

            def _send(self, status, obj, headers):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 drops bursts of concurrent connects
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def serve_forever(delay_s: float, reply: str) -> None:
    """`python -m tests.fake_provider DELAY REPLY`: a standalone provider process (benchmarks), so the
    client under test does not share its interpreter (and GIL) with the server."""
    import sys

    fake = FakeProvider()
    fake.delay_s, fake.default = delay_s, (200, reply, {})
    with fake:
        print(fake.url, flush=True)
        sys.stdin.read()  # runs until the parent closes our stdin


if __name__ == "__main__":
    import sys

    serve_forever(float(sys.argv[1]), sys.argv[2])

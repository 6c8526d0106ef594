"""A real loopback HTTP server speaking the OpenAI API (chat completions, files and batches): the only
stand-in in the tests, for the remote provider that cannot run here. Replies are scripted per test."""
from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeProvider:
    def __init__(self):
        self.requests: list[dict] = []   # chat completions, live or inside a batch
        self.script: list[tuple[int, object, dict]] = []  # (status, body or text, headers)
        self.default = (200, "ok", {})
        self.delay_s = 0.0
        self.delays: list[float] = []  # per-request delays, consumed in order, before delay_s applies
        self.lock = threading.Lock()
        self.in_flight = 0
        self.arrivals: list[int] = []  # calls in flight (this one included) as each call arrived
        self.spans: list[tuple[float, float]] = []  # (start, end) of each call, monotonic clock
        # usage of every reply: a dict, or a function of the request body (e.g. real token counts)
        self.usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        # batches: id -> {"input": [lines], "status", "polls", "output_file_id"}; files: id -> bytes
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_polls_until_done = 1  # status checks that still say in_progress
        self.on_batch_poll = None  # callable(batch_id, polls), e.g. to kill the client mid-wait
        self._ids = itertools.count(1)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real providers
            disable_nagle_algorithm = True  # headers and body leave at once, no delayed-ACK stall

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith("/v1/batches/"):
                    return self._send(200, provider._poll(path.rsplit("/", 1)[1]), {})
                if path.startswith("/v1/files/") and path.endswith("/content"):
                    return self._send_raw(200, provider.files[path.split("/")[3]], "application/jsonl")
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}, {})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path.split("?")[0]
                if path.endswith("/files"):
                    return self._send(200, provider._upload(self.headers.get("Content-Type", ""), raw), {})
                body = json.loads(raw or b"{}")
                if path.endswith("/batches"):
                    return self._send(200, provider._create_batch(body), {})
                status, obj, headers = provider.answer(body, dict(self.headers))
                if status == 200 and body.get("stream"):
                    return self._stream(obj, body, headers)
                self._send(status, obj, headers)

            def _stream(self, obj, body, headers):
                """The completion as server-sent chunks (chunked transfer), word by word, then the usage
                chunk when the client asked for it, then [DONE]."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                for event in provider.chunks(obj, body):
                    data = f"data: {event}\n\n".encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def _send(self, status, obj, headers):
                self._send_raw(status, json.dumps(obj).encode(), "application/json", headers)

            def _send_raw(self, status, data, kind, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default backlog of 5 drops bursts of concurrent connects
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, body: dict, headers: dict) -> tuple[int, dict, dict]:
        """One chat completion: (status, JSON body, headers), scripted or the default."""
        with self.lock:
            self.requests.append({"body": body, "headers": headers})
            status, reply, extra = self.script.pop(0) if self.script else self.default
            delay = self.delays.pop(0) if self.delays else self.delay_s
            self.in_flight += 1
            self.arrivals.append(self.in_flight)
            start = time.monotonic()
        try:
            if delay:
                time.sleep(delay)
            if status != 200:
                return status, {"error": {"message": str(reply), "type": "error", "code": status}}, extra
            text = reply(body) if callable(reply) else reply
            return 200, {"id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
                         "model": body.get("model", "fake"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": self.usage(body) if callable(self.usage) else dict(self.usage)}, extra
        finally:
            with self.lock:
                self.in_flight -= 1
                self.spans.append((start, time.monotonic()))

    @staticmethod
    def chunks(obj: dict, body: dict) -> list[str]:
        """A chat.completion as the chat.completion.chunk events a provider streams."""
        text = obj["choices"][0]["message"]["content"]
        base = {"id": obj["id"], "object": "chat.completion.chunk", "created": obj["created"], "model": obj["model"]}
        words = [w for w in text.split(" ")]
        deltas = [{"role": "assistant", "content": ""}] + [
            {"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
        out = [json.dumps(base | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}) for d in deltas]
        out.append(json.dumps(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append(json.dumps(base | {"choices": [], "usage": obj["usage"]}))
        return out + ["[DONE]"]

    # -- files and batches (https://platform.openai.com/docs/api-reference/batch) ---------------
    def _upload(self, content_type: str, raw: bytes) -> dict:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        parts = {part.get_param("name", header="content-disposition"): part for part in msg.iter_parts()}
        data = parts["file"].get_payload(decode=True)
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": parts["file"].get_filename() or "input.jsonl", "purpose": "batch"}

    def _create_batch(self, body: dict) -> dict:
        batch_id = f"batch_{next(self._ids)}"
        self.batches[batch_id] = {"input_file_id": body["input_file_id"], "endpoint": body["endpoint"],
                                  "status": "in_progress", "polls": 0, "output_file_id": None}
        return self._batch_object(batch_id)

    def _poll(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        batch["polls"] += 1
        if self.on_batch_poll:
            self.on_batch_poll(batch_id, batch["polls"])
        if batch["status"] == "in_progress" and batch["polls"] > self.batch_polls_until_done:
            lines = []
            for line in self.files[batch["input_file_id"]].decode().splitlines():
                item = json.loads(line)
                status, obj, _ = self.answer(item["body"], {})
                lines.append({"id": f"batch_req_{next(self._ids)}", "custom_id": item["custom_id"],
                              "response": {"status_code": status, "request_id": "req", "body": obj},
                              "error": None})
            out_id = f"file-{next(self._ids)}"
            self.files[out_id] = "".join(json.dumps(x) + "\n" for x in lines).encode()
            batch.update(status="completed", output_file_id=out_id)
        return self._batch_object(batch_id)

    def _batch_object(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        n = len(self.files[batch["input_file_id"]].decode().splitlines())
        done = batch["status"] == "completed"
        return {"id": batch_id, "object": "batch", "endpoint": batch["endpoint"], "errors": None,
                "input_file_id": batch["input_file_id"], "completion_window": "24h", "status": batch["status"],
                "output_file_id": batch["output_file_id"], "error_file_id": None, "created_at": int(time.time()),
                "request_counts": {"total": n, "completed": n if done else 0, "failed": 0}}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def serve_forever(delay_s: float, reply: str) -> None:
    """`python -m tests.fake_provider DELAY REPLY`: a standalone provider process (benchmarks), so the
    client under test does not share its interpreter (and GIL) with the server. REPLY `unique-pairs:N`
    answers every request with N pairs of fresh random words (a teacher that never repeats itself)."""
    import sys

    fake = FakeProvider()
    fake.delay_s = delay_s
    fake.default = (200, unique_pairs(int(reply.split(":")[1])) if reply.startswith("unique-pairs:") else reply, {})
    with fake:
        print(fake.url, flush=True)
        sys.stdin.read()  # runs until the parent closes our stdin


def unique_pairs(n: int, seed_from_body: bool = True):
    """A teacher reply function: n (instruction, response) pairs of random words, decided by the request
    body (the same request gets the same reply, as a provider honouring `seed` would)."""
    import hashlib
    import random

    vocab = [f"{a}{b}{c}" for a in "bcdfghklmnprst" for b in "aeiou" for c in "nrstlmk"]  # 490 syllables

    def reply(body: dict) -> str:
        key = json.dumps(body, sort_keys=True) if seed_from_body else None
        rng = random.Random(hashlib.sha256(key.encode()).digest() if key else None)

        def text(lo: int, hi: int) -> str:
            return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

        return json.dumps({"contents": [{"instruction": text(12, 40), "response": text(8, 30)} for _ in range(n)]})

    return reply


if __name__ == "__main__":
    import sys

    serve_forever(float(sys.argv[1]), sys.argv[2])

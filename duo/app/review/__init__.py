"""`duo review`: a local web page over the recorded and imported exchanges: filter by task or text,
accept or reject, edit a response, set the task; accepted exchanges become coverage rows. A second tab,
Ratings (duo/app/review/ratings.py), is where a person rates judged test responses (data/ratings.jsonl).

The page is a shell (page.html) with one tab per panel; a panel is a Python object (its state and
`actions()`, each answering POST /api/<panel>/<action> with JSON) plus a script (<panel>.js) that
registers how it draws itself. Exchanges (duo/app/review/exchanges.py) is the first, Ratings the second; a
further panel adds its module and script and one entry in `panels()`.

The server listens on 127.0.0.1 only, on a random port unless --port is given, and answers only requests
carrying the random token printed in its URL (so another local user or a web page open in the same
browser cannot drive it). Standard library http.server, plain HTML and JS: nothing to build.

Run: duo review [SOURCE ...] [--task NAME] [--port P]   (or: make review)
"""
from __future__ import annotations

import hmac
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import click

from duo.app import traffic

HERE = Path(__file__).resolve().parent
DECISIONS = Path("data/review.json")


def panels(coverage: Path, traffic_dir: Path, sources: list[Path], task: str | None) -> list:
    """The page's panels, in tab order."""
    from duo.app.review import exchanges, ratings

    items = exchanges.from_traffic(traffic_dir) + [i for src in sources for i in exchanges.from_file(src, task)]
    if task:
        for item in items:
            item.task = item.task or task
    return [exchanges.Exchanges(items, coverage, DECISIONS), ratings.from_project()]


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, panels: list, port: int = 0):
        self.panels = {p.name: p for p in panels}
        self.token = secrets.token_urlsafe(18)
        super().__init__(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server_port}/?token={self.token}"

    def page(self) -> bytes:
        shell = (HERE / "page.html").read_text(encoding="utf-8")
        tabs = [{"name": p.name, "title": p.title} for p in self.panels.values()]
        scripts = "".join(f'<script src="/panel/{p}.js?token={self.token}"></script>\n' for p in self.panels)
        return (shell.replace("/*PANELS*/", json.dumps(tabs)).replace("<!--SCRIPTS-->", scripts)
                .replace("/*TOKEN*/", json.dumps(self.token))).encode()


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args):
        pass

    def _authorized(self) -> bool:
        given = parse_qs(urlparse(self.path).query).get("token", [""])[0] or self.headers.get("X-Duo-Token", "")
        return hmac.compare_digest(given.encode(), self.server.token.encode())

    def _send(self, status: int, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def do_GET(self):
        if not self._authorized():
            return self._send(403, b"missing or wrong token: open the URL duo review printed", "text/plain")
        path = urlparse(self.path).path
        if path == "/":
            return self._send(200, self.server.page(), "text/html; charset=utf-8")
        name = path.removeprefix("/panel/").removesuffix(".js")
        if path.startswith("/panel/") and name in self.server.panels:
            return self._send(200, (HERE / f"{name}.js").read_bytes(), "text/javascript; charset=utf-8")
        self._json(404, {"error": f"no page {path}"})

    def do_POST(self):
        if not self._authorized():
            return self._json(403, {"error": "missing or wrong token"})
        parts = urlparse(self.path).path.strip("/").split("/")
        panel = self.server.panels.get(parts[1]) if len(parts) == 3 and parts[0] == "api" else None
        action = panel.actions().get(parts[2]) if panel else None
        if action is None:
            return self._json(404, {"error": f"no action {self.path.split('?')[0]}"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            self._json(200, action(body))
        except (ValueError, TypeError) as exc:
            self._json(400, {"error": str(exc)})
        except click.ClickException as exc:
            self._json(400, {"error": exc.message})


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("sources", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", help="Task given to exchanges that name none (each can be changed on the page).")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="0 = a free port.")
@click.option("--coverage", default="data/coverage.jsonl", show_default=True, type=click.Path(path_type=Path),
              help="Where accepted exchanges go (its other rows are kept).")
@click.option("--traffic-dir", default=str(traffic.TRAFFIC_DIR), show_default=True, type=click.Path(path_type=Path),
              help="duo record's exchanges.")
def main(sources: tuple[Path, ...], task: str | None, port: int, coverage: Path, traffic_dir: Path) -> None:
    """Review the recorded (data/traffic/) and imported (SOURCE: any file `duo import` reads) exchanges
    on a local page: accept, reject, edit, set the task. Accepted ones become coverage rows. The Ratings
    tab: rate judged test responses (data/ratings.jsonl) to check the judge against people.

    Prints the page's URL (127.0.0.1, with a random token); Ctrl-C stops."""
    server = Server(panels(coverage, traffic_dir, list(sources), task), port)
    counts = server.panels["exchanges"].list({})["counts"]
    click.echo(f"review: {server.url}")
    click.echo(f"review: {sum(counts.values())} exchanges ({counts['accepted']} accepted, {counts['rejected']} "
               f"rejected); accepted ones -> {coverage} (Ctrl-C stops)")
    from duo.app.review import ratings

    click.echo(ratings.count_line(server.panels["ratings"]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()

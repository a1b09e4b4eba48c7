"""A loopback HTTP file server for download tests: byte ranges, truncated transfers, failures.

Started by the tests on 127.0.0.1 with an ephemeral port; it serves files from a folder the
tests fill with fixtures they build themselves. Nothing here reaches the network.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Loopback:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.truncate_once: dict[str, int] = {}  # name -> bytes sent before the first drop
        self.fail_times: dict[str, int] = {}  # name -> number of 503 answers before success
        self.requests: list[tuple[str, str | None]] = []
        self.hits: defaultdict[str, int] = defaultdict(int)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # noqa: N802
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                server.hits[name] += 1
                if server.fail_times.get(name, 0) > 0:
                    server.fail_times[name] -= 1
                    self.send_error(503)
                    return
                path = server.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = server.truncate_once.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""A loopback HTTP server for the benchmarks' input images: files of one directory, held in memory.

    python bench/imageserver.py --dir DIR [--port 0]

Prints `{"port": N}` on stdout once it listens on 127.0.0.1, then serves `GET`/`HEAD /<name>` for every file that was
in DIR at start (read once, so disk reads never show up in fetch timings) with HTTP/1.1 keep-alive, from a thread per
connection, without request logging. It binds only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def make_handler(files: dict[str, tuple[bytes, str]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "bench-images"

        def _answer(self, with_body: bool) -> None:
            entry = files.get(self.path.split("?", 1)[0].lstrip("/"))
            if entry is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, content_type = entry
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if with_body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the standard library's name
            return

    return Handler


def load(directory: Path) -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            files[path.name] = (path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
    return files


class Server(ThreadingHTTPServer):
    # Set on the class: the listen() backlog is taken from it while the constructor binds. The default (5) drops
    # connection attempts under a burst, and the client's SYN retry then shows up as a 1 s fetch.
    request_queue_size = 1024
    daemon_threads = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = Server(("127.0.0.1", args.port), make_handler(load(args.dir)))
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

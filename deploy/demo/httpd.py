"""A tiny demo service: GET /healthz answers 200 "ok", or 500 while the file $FAIL_FILE exists.

Usage: httpd.py PORT [FAIL_FILE]. Standard library only, so any python3 can run it as a unit.
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    fail_file = ""

    def do_GET(self) -> None:
        failing = bool(self.fail_file) and os.path.exists(self.fail_file)
        status, body = (500, b"failing\n") if failing else (200, b"ok\n")
        if self.path != "/healthz":
            status, body = 404, b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> None:
    Handler.fail_file = sys.argv[2] if len(sys.argv) > 2 else ""
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()


if __name__ == "__main__":
    main()

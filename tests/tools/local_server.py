"""A local HTTP server for URL sources, with the faults a download meets (stdlib only).

    server = LocalServer(folder, drops=1, ranges=True)   # server.url -> "http://127.0.0.1:<port>"
    ...
    server.received    # [(path, headers)] of every request
    server.stop()
"""

import http.server
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
from pathlib import Path


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client killed mid-download: nothing to say
            super().handle_error(request, client_address)


class LocalServer:
    """A one-folder HTTP server on 127.0.0.1 that records its requests (path and headers).

    Faults, for download tests: short=True answers every request with half of the file under the
    whole file's Content-Length; drops=n resets the connection halfway through the first n answers;
    ranges=True answers a Range request with 206 and the rest of the file; rate slows the sending
    to about that many bytes per second; stall=n sends the first n bytes of each answer and then
    nothing for `stall_seconds`."""

    def __init__(self, folder, short: bool = False, drops: int = 0, ranges: bool = False, rate: float | None = None,
                 stall: int | None = None, stall_seconds: float = 5.0):
        self.received: list[tuple[str, dict]] = []
        self.short, self.drops, self.ranges, self.rate = short, drops, ranges, rate
        self.stall, self.stall_seconds = stall, stall_seconds
        outer, folder = self, Path(folder)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.received.append((self.path, dict(self.headers)))
                path = folder / urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
                if not path.is_file():
                    return self.send_error(404)
                data, start = path.read_bytes(), 0
                asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if outer.ranges and asked:
                    start = int(asked[1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                drop = outer.drops > 0
                outer.drops -= drop
                sent = len(body) // 2 if outer.short or drop else len(body)
                if outer.stall is not None:
                    self.wfile.write(body[:outer.stall])
                    self.wfile.flush()
                    time.sleep(outer.stall_seconds)
                    self.close_connection = True
                    return
                for at in range(0, sent, 1 << 16):
                    self.wfile.write(body[at:min(at + (1 << 16), sent)])
                    if outer.rate:
                        time.sleep((1 << 16) / outer.rate)
                self.wfile.flush()
                if drop:  # a reset, not a clean end (once the client has read what was sent)
                    time.sleep(0.1)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                elif outer.short:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def requests(self) -> int:
        return len(self.received)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

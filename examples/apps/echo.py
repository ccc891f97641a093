#!/usr/bin/env python3
"""A tiny demo backend with no mesh code in it: answers every request with a JSON echo of
what it received (the way the Gateway API conformance echo server does)."""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_any(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            # A header sent on several lines is one value, joined with commas (RFC 9110 §5.3).
            headers = {}
            for k, v in self.headers.items():
                k = k.lower()
                headers[k] = f"{headers[k]},{v}" if k in headers else v
            out = json.dumps(
                {
                    "backend": args.name,
                    "method": self.command,
                    "path": self.path,
                    "host": self.headers.get("host"),
                    "headers": headers,
                    "bodyBytes": len(body),
                },
                indent=2,
            ).encode() + b"\n"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

        def log_message(self, *a):
            pass

    ThreadingHTTPServer((args.host, args.port), Echo).serve_forever()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass

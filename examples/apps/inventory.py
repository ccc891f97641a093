#!/usr/bin/env python3
"""inventory: the lab's stock service. Plain HTTP on a port, no mesh code in it; which version
it is comes from --version."""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ITEMS = [{"sku": "tea", "stock": 12}, {"sku": "coffee", "stock": 3}, {"sku": "cocoa", "stock": 0}]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--version", default="v1")
    args = p.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = {"service": "inventory", "version": args.version, "items": ITEMS}
            if args.version == "v2":
                body["items"] = ITEMS + [{"sku": "matcha", "stock": 7}]
            out = json.dumps(body).encode() + b"\n"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass

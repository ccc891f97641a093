#!/usr/bin/env python3
"""order: the lab's front service. On every request it asks inventory for the items (plain
HTTP to http://inventory:8080, a name like any other: no mesh code in it) and answers with
what it got, or with why it got nothing. Like every app in a mesh with tracing, it passes the
trace headers of the request it serves on to the calls it makes (the proxies cannot tell which
outgoing call belongs to which incoming request)."""
import argparse
import json
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# W3C Trace Context and B3 (single and multi header), and the request id.
TRACE_HEADERS = ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
                 "x-b3-sampled", "x-b3-flags", "x-request-id"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--inventory", default="http://inventory:8080")
    p.add_argument("--inventory-host", help="Host header for inventory (loopback lab: via the gateway)")
    args = p.parse_args()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            req = urllib.request.Request(args.inventory + "/items")
            for h in TRACE_HEADERS:
                if self.headers.get(h):
                    req.add_header(h, self.headers[h])
            if args.inventory_host:
                req.add_header("Host", args.inventory_host)
            status = 200
            try:
                with opener.open(req, timeout=3) as r:
                    inventory = json.loads(r.read())
            except urllib.error.HTTPError as e:
                status = 502
                inventory = {"error": f"inventory answered {e.code}", "body": e.read().decode(errors="replace").strip()}
            except Exception as e:  # noqa: BLE001 - the lab shows any failure as it is
                status = 502
                inventory = {"error": f"cannot reach inventory: {e}"}
            out = json.dumps({"service": "order", "inventory": inventory}, indent=2).encode() + b"\n"
            self.send_response(status)
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

"""Sends a list of requests, each twice in a row, on one kept-alive connection with two
pooled HTTP clients nobody here wrote: the standard library's `http.client` (one
`HTTPConnection`, which reconnects only after an answer that said `Connection: close`)
and `requests.Session` (urllib3's pool, limited to one connection). Driven by
tests/keepalive.rs.

stdin: {"base": "http://127.0.0.1:PORT", "requests": [{"name", "method", "path",
        "headers": {..}, "body": str | null, "chunked": bool, "partial": int | null}]}
  `chunked`: the body is sent with chunked transfer encoding (a generator body).
  `partial`: only this many bytes of the declared body are sent (http.client only; the
             server answers 408 when the rest does not come).
stdout: {"results": [{"client", "name", "attempt", "status" | "error",
         "connection": header value or null, "new_socket": bool (http.client)}]}
"""

import http.client
import json
import sys
import urllib.parse

import requests
from requests.adapters import HTTPAdapter


def run_http_client(base, reqs, out):
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    for r in reqs:
        for attempt in (1, 2):
            new_socket = conn.sock is None
            item = {"client": "http.client", "name": r["name"], "attempt": attempt}
            try:
                body = r.get("body")
                data = body.encode() if body is not None else None
                headers = dict(r.get("headers") or {})
                partial = r.get("partial")
                if partial is not None:
                    conn.putrequest(r["method"], r["path"])
                    for k, v in headers.items():
                        conn.putheader(k, v)
                    conn.putheader("Content-Length", str(len(data)))
                    conn.endheaders(data[:partial])
                elif r.get("chunked"):
                    conn.request(r["method"], r["path"], body=iter([data[i:i + 1000] for i in range(0, len(data), 1000)]),
                                 headers=headers, encode_chunked=True)
                else:
                    conn.request(r["method"], r["path"], body=data, headers=headers)
                # Connected by this request when the connection had no socket before.
                item["new_socket"] = new_socket
                resp = conn.getresponse()
                resp.read()
                item["status"] = resp.status
                item["connection"] = resp.getheader("Connection")
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                item["error"] = f"{type(e).__name__}: {e}"
                item["new_socket"] = new_socket
                conn.close()
            out.append(item)
    conn.close()


def run_requests(base, reqs, out):
    s = requests.Session()
    # One pooled connection: every request after the first reuses it unless the server
    # said `Connection: close`.
    s.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
    for r in reqs:
        if r.get("partial") is not None:
            continue
        for attempt in (1, 2):
            item = {"client": "requests", "name": r["name"], "attempt": attempt}
            try:
                body = r.get("body")
                data = body.encode() if body is not None else None
                if data is not None and r.get("chunked"):
                    data = iter([data[i:i + 1000] for i in range(0, len(data), 1000)])
                resp = s.request(r["method"], base + r["path"], data=data,
                                 headers=r.get("headers") or {}, timeout=20)
                item["status"] = resp.status_code
                item["connection"] = resp.headers.get("Connection")
            except Exception as e:  # noqa: BLE001
                item["error"] = f"{type(e).__name__}: {e}"
            out.append(item)
    s.close()


def main():
    spec = json.load(sys.stdin)
    out = []
    run_http_client(spec["base"], spec["requests"], out)
    run_requests(spec["base"], spec["requests"], out)
    json.dump({"results": out}, sys.stdout)


if __name__ == "__main__":
    main()

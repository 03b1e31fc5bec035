"""Schemathesis hooks for meterd (loaded through SCHEMATHESIS_HOOKS by tests/openapi.rs).

- NDJSON request bodies: the OpenAPI document describes an NDJSON body as the array of
  its lines, so a generated list is written one JSON value per line.
- NDJSON and CSV responses (`GET /v1/usage` streams) are read back into the list of
  rows (CSV: one dict per record, keyed by the header line), so the documented schemas
  are checked against what was streamed.
- `GET /v1/usage` is asked for JSON, NDJSON and CSV in turn (the format follows
  `Accept`, which an OpenAPI parameter cannot describe).
"""

import csv
import io
import itertools
import json

import schemathesis

NDJSON = ("application/x-ndjson",)


@schemathesis.serializer(*NDJSON)
def _ndjson_body(ctx, value):
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


@schemathesis.deserializer(*NDJSON)
def _ndjson_response(ctx, response):
    text = response.content.decode("utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


@schemathesis.deserializer("text/csv")
def _csv_response(ctx, response):
    text = response.content.decode("utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


_ACCEPT = itertools.cycle(["application/json", "application/x-ndjson", "text/csv"])


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.operation.method.upper() == "GET" and case.operation.path == "/v1/usage":
        case.headers = dict(case.headers or {})
        case.headers["Accept"] = next(_ACCEPT)

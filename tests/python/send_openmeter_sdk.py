"""Sends usage to meterd with the OpenMeter Python SDK (package `openmeter`), pointed at
meterd's base URL with an API key as its bearer token, exactly as an OpenMeter user would.

Modes (the SDK's three ingest calls, all POST /api/v1/events):
- single: `client.events.ingest_event(Event)` per event (application/cloudevents+json);
- batch: `client.events.ingest_events([Event])` (application/cloudevents-batch+json);
- json: `client.events.ingest_events_json([Event])` (application/json, an array).

An HTTP error answer raises the SDK's HttpResponseError; its status and body go into the
summary (see meterd_sdk_common.py) instead of failing the script. Usage:
  python send_openmeter_sdk.py --url http://127.0.0.1:8080 --key KEY \
      --contract ctr --lever tokens --mode batch --id-prefix b --values 1,2.5 --buckets m1,m2
"""

import sys
from importlib.metadata import version

from corehttp.exceptions import HttpResponseError
from openmeter import Client
from openmeter.models import Event

from meterd_sdk_common import body_of, parse_args, plan, summary


def to_event(e):
    fields = {
        "id": e["id"],
        "source": e["source"],
        "specversion": e["specversion"],
        "type": e["type"],
        "subject": e["subject"],
        "data": e["data"],
    }
    if e["time"] is not None:
        fields["time"] = e["time"]
    return Event(**fields)


def outcome(pipeline_response, _deserialized, _headers):
    return {
        "status": pipeline_response.http_response.status_code,
        "content_type": pipeline_response.http_request.headers.get("content-type"),
        "response_content_type": pipeline_response.http_response.headers.get("content-type"),
        "body": body_of(pipeline_response.http_response.text()),
    }


def call(op, body):
    try:
        return op(body, cls=outcome)
    except HttpResponseError as err:
        r = err.response
        return {
            "status": r.status_code,
            "content_type": r.request.headers.get("content-type"),
            "response_content_type": r.headers.get("content-type"),
            "body": body_of(r.text()),
            "sdk_error": type(err).__name__,
        }


def main():
    a = parse_args(__doc__.splitlines()[0], ["single", "batch", "json"])
    events = plan(a)
    models = [to_event(e) for e in events]
    sent = []
    with Client(endpoint=a.url, token=a.key) as client:
        if a.mode == "single":
            for m in models:
                sent.append(call(client.events.ingest_event, m))
        elif a.mode == "batch":
            sent.append(call(client.events.ingest_events, models))
        else:
            sent.append(call(client.events.ingest_events_json, models))
    summary("openmeter", version("openmeter"), a.mode, events, sent)


if __name__ == "__main__":
    sys.exit(main())

"""Sends usage to meterd's POST /api/v1/events with the CNCF CloudEvents Python SDK
(package `cloudevents`), as a producer that knows nothing of meterd would.

Modes:
- structured: one HTTP request per event, headers and body from the SDK's
  `cloudevents.conversion.to_structured` (application/cloudevents+json);
- binary: one HTTP request per event in binary content mode, headers and body from the
  SDK's `cloudevents.conversion.to_binary` (attributes as ce- headers, `data` as the
  JSON body). The SDK sets Content-Type only when the event has a `datacontenttype`
  (--datacontenttype); without one it sends none.
- batch: one request for all events. The SDK has no batch encoder (neither 1.x nor 2.x
  does), so each event is serialized by the SDK (`cloudevents.conversion.to_json`) and
  the JSON array of those is sent as application/cloudevents-batch+json, the CloudEvents
  JSON batch format.

Prints a JSON summary (see meterd_sdk_common.py). Usage:
  python send_cloudevents_sdk.py --url http://127.0.0.1:8080 --key KEY \
      --contract ctr --lever tokens --mode batch --id-prefix b --values 1,2.5 --buckets m1,m2
"""

import sys
from importlib.metadata import version

import requests
from cloudevents.conversion import to_binary, to_json, to_structured
from cloudevents.http import CloudEvent

from meterd_sdk_common import body_of, parse_args, plan, summary


def to_cloudevent(e, datacontenttype=None):
    attributes = {
        "id": e["id"],
        "source": e["source"],
        "specversion": e["specversion"],
        "type": e["type"],
        "subject": e["subject"],
    }
    if e["time"] is not None:
        attributes["time"] = e["time"].isoformat().replace("+00:00", "Z")
    if datacontenttype:
        attributes["datacontenttype"] = datacontenttype
    return CloudEvent(attributes, e["data"])


def post(a, headers, body):
    headers = dict(headers)
    headers["Authorization"] = f"Bearer {a.key}"
    r = requests.post(f"{a.url}/api/v1/events", headers=headers, data=body, timeout=60)
    return {
        "status": r.status_code,
        "content_type": headers.get("content-type"),
        "response_content_type": r.headers.get("content-type"),
        "body": body_of(r.text),
    }


def main():
    a = parse_args(
        __doc__.splitlines()[0],
        ["structured", "batch", "binary"],
        extra=lambda p: p.add_argument(
            "--datacontenttype", help="the events' datacontenttype (binary mode: Content-Type)"
        ),
    )
    events = plan(a)
    ces = [to_cloudevent(e, a.datacontenttype) for e in events]
    sent = []
    if a.mode == "structured":
        for ce in ces:
            headers, body = to_structured(ce)
            sent.append(post(a, headers, body))
    elif a.mode == "binary":
        for ce in ces:
            headers, body = to_binary(ce)
            sent.append(post(a, headers, body))
    else:
        body = b"[" + b",".join(to_json(ce) for ce in ces) + b"]"
        sent.append(post(a, {"content-type": "application/cloudevents-batch+json"}, body))
    summary("cloudevents", version("cloudevents"), a.mode, events, sent)


if __name__ == "__main__":
    sys.exit(main())

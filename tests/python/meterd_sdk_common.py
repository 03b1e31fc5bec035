"""Shared by the SDK driver scripts of tests/cloudevents.rs: command line, event plan and
the JSON summary printed on stdout.

Each script sends one CloudEvent per entry of --values: event i has id
"<id-prefix>-<i>", the given source, subject (the meterd contract) and type (the lever),
and data holding value i at --value-path (a dotted path, e.g. "usage.tokens.total") and
bucket i at --bucket-path. A script exits 0 once every HTTP exchange took place, whatever
its status: the summary reports each status and body for the test to judge. It exits
non-zero only when it could not do what it was asked (bad arguments, connection refused,
an SDK exception other than an HTTP error answer).
"""

import argparse
import datetime
import json
import os
import sys


def parse_args(description, modes, extra=None):
    p = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(p)
    env = os.environ.get
    p.add_argument("--url", default=env("METERD_URL"), help="meterd base URL ($METERD_URL)")
    p.add_argument("--key", default=env("METERD_KEY"), help="API key ($METERD_KEY)")
    p.add_argument("--contract", default=env("METERD_CONTRACT"), help="CloudEvents subject")
    p.add_argument("--lever", default=env("METERD_LEVER"), help="CloudEvents type")
    p.add_argument("--mode", choices=modes, required=True)
    p.add_argument("--source", default="meterd-sdk-tests", help="CloudEvents source")
    p.add_argument("--id-prefix", required=True, help="event i gets id <prefix>-<i>")
    p.add_argument(
        "--values",
        required=True,
        help="comma-separated decimal literals, one per event",
    )
    p.add_argument(
        "--buckets",
        default="",
        help="comma-separated buckets, one per event (cycled); an empty entry sends none",
    )
    p.add_argument("--value-path", default="tokens", help="dotted path of the value in data")
    p.add_argument("--bucket-path", default="model", help="dotted path of the bucket in data")
    p.add_argument(
        "--value-as",
        choices=["number", "string"],
        default="number",
        help="send each value as a JSON number or as a decimal string",
    )
    p.add_argument(
        "--omit-value",
        default="",
        help="comma-separated event indexes whose data lacks the value (bad events)",
    )
    p.add_argument(
        "--sdk-time",
        action="store_true",
        help="leave `time` to the SDK's default where it has one",
    )
    a = p.parse_args()
    for name in ("url", "key", "contract", "lever"):
        if not getattr(a, name):
            p.error(f"--{name} (or $METERD_{name.upper()}) is required")
    a.url = a.url.rstrip("/")
    return a


def json_value(literal, value_as):
    """The value of one event as it goes into `data`."""
    if value_as == "string":
        return literal
    if all(c.isdigit() for c in literal):
        return int(literal)
    f = float(literal)
    # Refuse literals a binary float cannot carry exactly to the wire: the test compares
    # exact decimals, so the client must not round them.
    if repr(f) != literal:
        sys.exit(f"value {literal!r} is not sent exactly as a JSON float ({f!r}); use --value-as string")
    return f


def set_path(data, path, value):
    parts = path.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def plan(a):
    """The events to send, as plain dicts of CloudEvents attributes plus `data`."""
    values = [v.strip() for v in a.values.split(",")]
    buckets = a.buckets.split(",") if a.buckets else [""]
    omit = {int(i) for i in a.omit_value.split(",") if i.strip()}
    now = datetime.datetime.now(datetime.timezone.utc)
    events = []
    for i, literal in enumerate(values):
        data = {}
        if i not in omit:
            set_path(data, a.value_path, json_value(literal, a.value_as))
        bucket = buckets[i % len(buckets)]
        if bucket:
            set_path(data, a.bucket_path, bucket)
        events.append(
            {
                "id": f"{a.id_prefix}-{i}",
                "source": a.source,
                "specversion": "1.0",
                "type": a.lever,
                "subject": a.contract,
                "time": None if a.sdk_time else now,
                "data": data,
                # Not sent: what the test expects this event to contribute.
                "meta": {"value": None if i in omit else literal, "bucket": bucket or None},
            }
        )
    return events


def body_of(text):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def summary(sdk, version, mode, events, requests):
    """Prints what was sent and what meterd answered as one JSON line."""
    out = {
        "sdk": sdk,
        "sdk_version": version,
        "mode": mode,
        "events": [
            {
                "id": e["id"],
                "source": e["source"],
                "subject": e["subject"],
                "type": e["type"],
                "value": e["meta"]["value"],
                "bucket": e["meta"]["bucket"],
            }
            for e in events
        ],
        "requests": requests,
    }
    print(json.dumps(out, sort_keys=True))

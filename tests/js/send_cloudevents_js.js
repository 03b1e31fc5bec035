// Sends usage to meterd's POST /api/v1/events with the CNCF CloudEvents JavaScript SDK
// (npm package `cloudevents`, pinned in package.json), as a Node.js producer that knows
// nothing of meterd would. Driven by tests/cloudevents_binary.rs, which installs the
// package into $HOME/.cache/meterd/node-sdk and runs this script with NODE_PATH there.
//
// Modes (one HTTP request per event):
// - emitter: the SDK's default emitter, `emitterFor(httpTransport(url))`, which sends in
//   binary content mode. The Authorization header goes in the emit options: the SDK's
//   httpTransport merges `options.headers` into the headers of node's http request. Its
//   response carries no status code (the SDK resolves with the body and headers only),
//   so `status` is null in the summary; meterd's 204 is an empty body, and every
//   refusal is a problem+json body.
// - binary: `HTTP.binary(event)` posted with node's fetch (status included).
// - structured: `HTTP.structured(event)` posted with node's fetch.
//
// Event i has id "<id-prefix>-<i>", the given source, subject (the meterd contract) and
// type (the lever), data holding value i at --value-path and bucket i at --bucket-path,
// and, with --extension name=value, that extension attribute (sent as a ce- header in
// binary mode). Prints a JSON summary line like tests/python/meterd_sdk_common.py: the
// events sent and per request the status, the content type sent and the answer.
//
// Usage:
//   node send_cloudevents_js.js --url http://127.0.0.1:8080 --key KEY --contract ctr \
//       --lever tokens --mode emitter --id-prefix j --values 1,2.5 --buckets m1,m2

"use strict";

const { CloudEvent, HTTP, emitterFor, httpTransport } = require("cloudevents");
const sdkVersion = require("cloudevents/package.json").version;

const MODES = ["emitter", "binary", "structured"];

function parseArgs(argv) {
  const a = {
    source: "meterd-js-sdk-tests",
    buckets: "",
    valuePath: "tokens",
    bucketPath: "model",
    valueAs: "number",
    omitValue: "",
    extension: null,
  };
  const names = {
    "--url": "url",
    "--key": "key",
    "--contract": "contract",
    "--lever": "lever",
    "--mode": "mode",
    "--source": "source",
    "--id-prefix": "idPrefix",
    "--values": "values",
    "--buckets": "buckets",
    "--value-path": "valuePath",
    "--bucket-path": "bucketPath",
    "--value-as": "valueAs",
    "--omit-value": "omitValue",
    "--extension": "extension",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (!name || i + 1 >= argv.length) {
      fail(`bad argument ${JSON.stringify(argv[i])}`);
    }
    a[name] = argv[i + 1];
  }
  for (const req of ["url", "key", "contract", "lever", "mode", "idPrefix", "values"]) {
    if (a[req] === undefined) fail(`--${req} is required`);
  }
  if (!MODES.includes(a.mode)) fail(`--mode must be one of ${MODES.join(", ")}`);
  if (!["number", "string"].includes(a.valueAs)) fail("--value-as: number or string");
  a.url = a.url.replace(/\/+$/, "");
  return a;
}

function fail(message) {
  process.stderr.write(`send_cloudevents_js.js: ${message}\n`);
  process.exit(2);
}

// The value of one event as it goes into `data`: refuses literals that a JavaScript
// number would not carry exactly to the wire (the test compares exact decimals).
function jsonValue(literal, valueAs) {
  if (valueAs === "string") return literal;
  const n = Number(literal);
  if (String(n) !== literal) {
    fail(`value ${literal} is not sent exactly as a JSON number (${n}); use --value-as string`);
  }
  return n;
}

function setPath(data, path, value) {
  const parts = path.split(".");
  let cur = data;
  for (const p of parts.slice(0, -1)) {
    if (typeof cur[p] !== "object") cur[p] = {};
    cur = cur[p];
  }
  cur[parts[parts.length - 1]] = value;
}

function plan(a) {
  const values = a.values.split(",").map((v) => v.trim());
  const buckets = a.buckets ? a.buckets.split(",") : [""];
  const omit = new Set(
    a.omitValue
      .split(",")
      .filter((s) => s.trim() !== "")
      .map(Number),
  );
  return values.map((literal, i) => {
    const data = {};
    if (!omit.has(i)) setPath(data, a.valuePath, jsonValue(literal, a.valueAs));
    const bucket = buckets[i % buckets.length];
    if (bucket) setPath(data, a.bucketPath, bucket);
    const attributes = {
      id: `${a.idPrefix}-${i}`,
      source: a.source,
      type: a.lever,
      subject: a.contract,
      data,
    };
    if (a.extension) {
      const [name, ...rest] = a.extension.split("=");
      attributes[name] = rest.join("=");
    }
    // The SDK fills in specversion 1.0 and `time` (now); in binary mode it sends `data`
    // as JSON with its default Content-Type, application/json; charset=utf-8.
    const event = new CloudEvent(attributes);
    return {
      event,
      meta: {
        id: event.id,
        source: event.source,
        subject: event.subject,
        type: event.type,
        value: omit.has(i) ? null : literal,
        bucket: bucket || null,
      },
    };
  });
}

function bodyOf(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function postWithFetch(a, message) {
  const headers = { ...message.headers, Authorization: `Bearer ${a.key}` };
  const r = await fetch(`${a.url}/api/v1/events`, {
    method: "POST",
    headers,
    body: message.body,
  });
  return {
    status: r.status,
    content_type: message.headers["content-type"],
    response_content_type: r.headers.get("content-type"),
    body: bodyOf(await r.text()),
  };
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const events = plan(a);
  const sent = [];
  const emit = emitterFor(httpTransport(`${a.url}/api/v1/events`));
  for (const { event } of events) {
    if (a.mode === "emitter") {
      const resp = await emit(event, { headers: { Authorization: `Bearer ${a.key}` } });
      sent.push({
        status: null,
        content_type: HTTP.binary(event).headers["content-type"],
        response_content_type: resp.headers["content-type"] || null,
        body: bodyOf(resp.body),
      });
    } else if (a.mode === "binary") {
      sent.push(await postWithFetch(a, HTTP.binary(event)));
    } else {
      sent.push(await postWithFetch(a, HTTP.structured(event)));
    }
  }
  const summary = {
    sdk: "cloudevents-js",
    sdk_version: sdkVersion,
    mode: a.mode,
    events: events.map((e) => e.meta),
    requests: sent,
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

main().catch((e) => {
  process.stderr.write(`send_cloudevents_js.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});

"""Takeover probe for the cluster phase (benches/phases/cluster.sh).

    python3 takeover.py CLUSTER_JSON METERD ROUNDS LEVER

The probe creates 64 contracts of its own (`takeover-00` to `takeover-63`: with a few
dozen partitions, every partition holds some, so every node owns some of them). Each
round: `kill -9` of one meterd node (not meterd-1, through which the probe sends), then
one request every 20 ms to meterd-1 with one fresh event per contract, until every
contract whose partition the victim owned is accepted again; prints

    TAKEOVER round=R victim=NAME affected=K longest=L seconds=S

where `affected` counts the contracts answered `unavailable` (or not answered) after
the kill, `longest` is the longest a probe request took (a request may also wait for the
takeover instead of being refused), and `seconds` is the time from the kill until a
request in which every contract was accepted was answered. Then the victim is restarted on its config (its pid file updated, so
`scripts/cluster.sh down` stops it) and the probe waits for its /readyz and for every
partition to have an owner again.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

cluster_json, meterd, rounds, lever = sys.argv[1:5]
rounds = int(rounds)
with open(cluster_json) as f:
    cluster = json.load(f)
nodes = [p for p in cluster["processes"] if p["kind"] == "meterd"]
key = cluster["keys"]["ingest"]
front = nodes[0]
names = [f"takeover-{i:02d}" for i in range(64)]
n = 0


def call(path, body, method="POST", key=key):
    req = urllib.request.Request(
        front["api_url"] + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


for c in names:
    call(f"/v1/contracts/{c}", {"customer": "takeover"}, "PUT", cluster["keys"]["admin"])
time.sleep(1)


def post(events):
    req = urllib.request.Request(
        front["api_url"] + "/v1/events",
        data=json.dumps(events).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)
    except Exception:
        return None


def probe():
    """One request with an event per contract: the contracts not accepted, and how long
    the request took."""
    global n
    events = []
    for c in names:
        n += 1
        events.append({"id": f"takeover-{os.getpid()}-{n}", "contract": c, "lever": lever, "value": 1})
    started = time.monotonic()
    answer = post(events)
    took = time.monotonic() - started
    if answer is None:
        return set(names), took
    return {names[e["index"]] for e in answer.get("errors", [])}, took


def ready(url):
    try:
        urllib.request.urlopen(url + "/readyz", timeout=2).read()
        return True
    except Exception:
        return False


def owned_everywhere(partitions):
    owned = set()
    for node in nodes:
        try:
            text = urllib.request.urlopen(node["metrics_url"] + "/metrics", timeout=2).read().decode()
        except Exception:
            continue
        for line in text.splitlines():
            if line.startswith("meterd_cluster_partition_epoch{"):
                p = line.split('partition="')[1].split('"')[0]
                if float(line.rsplit(" ", 1)[1]) > 0:
                    owned.add(p)
    return len(owned) >= partitions


def partitions():
    text = urllib.request.urlopen(front["metrics_url"] + "/metrics", timeout=2).read().decode()
    return sum(1 for l in text.splitlines() if l.startswith("meterd_cluster_partition_epoch{"))


total = partitions()
for r in range(1, rounds + 1):
    victim = nodes[1 + (r - 1) % (len(nodes) - 1)]
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    affected = set()
    longest = 0.0
    timed_out = False
    while True:
        refused, took = probe()
        affected |= refused
        longest = max(longest, took)
        elapsed = time.monotonic() - killed
        if not refused and elapsed > 0.5:
            break
        if elapsed > 120:
            timed_out = True
            break
        time.sleep(0.02)
    seconds = "timeout" if timed_out else f"{elapsed:.3f}"
    print(f"TAKEOVER round={r} victim={victim['name']} affected={len(affected)} longest={longest:.3f} seconds={seconds}", flush=True)
    # Restart the victim on its config and wait until every partition has an owner.
    log = open(victim["log"], "a")
    proc = subprocess.Popen([meterd, "serve", "--config", victim["config"]], stdout=log, stderr=log,
                            env=dict(os.environ, RUST_LOG="info,meterd::access=off"))
    victim["pid"] = proc.pid
    with open(os.path.join(os.path.dirname(victim["config"]), "pid"), "w") as f:
        f.write(f"{proc.pid}\n")
    deadline = time.monotonic() + 120
    while not ready(victim["api_url"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    while not owned_everywhere(total) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)

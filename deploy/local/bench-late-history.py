#!/usr/bin/env python3
"""Late history over HTTP (see docs/benchmarks.md): about 30,500 events over six months (600
users, 19 event types, sessions), posted to POST /events in batches of 500 in file order
(grouped by user, so time jumps back and forth) after one live event, so that nearly all of
them are late. Prints when no correction is pending any more, then checks every /reports point
of 1d, 1h and 1m windows (four metrics, all events and one event type) over every complete day
against its own count of what it sent, until all are exact.

    python3 deploy/local/bench-late-history.py http://127.0.0.1:8080   # a running `tally all`
"""
import json, random, time, urllib.request, sys, collections, datetime
API = sys.argv[1]
rng = random.Random(42)
now = int(time.time() * 1000)
start = now - 182 * 86400000
types = [f"type_{i}" for i in range(19)]
events = []
# 600 users, each with sessions spread over six months; file grouped by user.
n = 0
for u in range(600):
    t = start + rng.randrange(170 * 86400000)
    for s in range(6):
        t0 = start + rng.randrange(180 * 86400000)
        for k in range(rng.randrange(4, 14)):
            ts = t0 + k * rng.randrange(5000, 120000)
            if ts >= now - 3600000: continue
            events.append({"event_id": f"six-{n}", "event_type": rng.choice(types), "user_id": f"u{u}",
                           "session_id": f"u{u}-s{s}", "timestamp": ts})
            n += 1
print("events", len(events), file=sys.stderr)
def post(batch):
    req = urllib.request.Request(API + "/events", data=json.dumps(batch).encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())
# live event first so the history is late
post([{"event_type": "live", "user_id": "live", "timestamp": now}])
time.sleep(3)
for i in range(0, len(events), 500):
    r = post(events[i:i+500]); assert r["accepted"] == len(events[i:i+500]), r
last = time.time()
print("posted", len(events), "last POST at", last, file=sys.stderr)
def iso(ms): return datetime.datetime.fromtimestamp(ms/1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
def oracle(size, et=None):
    g = collections.defaultdict(list)
    for e in events:
        if et and e["event_type"] != et: continue
        g[e["timestamp"] - e["timestamp"] % size].append(e)
    return {k: [len(v), len({e["user_id"] for e in v}), len({e["session_id"] for e in v}), len({e["event_type"] for e in v})] for k, v in g.items()}
metrics = ["events", "unique_users", "unique_sessions", "unique_event_types"]
def check():
    bad = total = 0
    day0 = start - start % 86400000
    end = now - now % 86400000  # complete days only
    for size, w, step in [(86400000, "1d", end - day0), (3600000, "1h", 86400000 * 90), (60000, "1m", 86400000 * 6)]:
        for et in [None, "type_3"]:
            want = oracle(size, et)
            t = day0
            while t < end:
                to = min(t + step, end)
                for mi, m in enumerate(metrics):
                    if et and m == "unique_event_types": continue
                    url = f"{API}/reports?metric={m}&window={w}&from={iso(t)}&to={iso(to)}" + (f"&event_type={et}" if et else "")
                    r = json.loads(urllib.request.urlopen(url).read())
                    for p in r["points"]:
                        ws = int(datetime.datetime.strptime(p["window_start"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
                        total += 1
                        if p["value"] != want.get(ws, [0,0,0,0])[mi]: bad += 1
                t = to
    return bad, total
day0 = start - start % 86400000
while True:
    pend = 0
    for w in ["1d", "1h"]:
        r = json.loads(urllib.request.urlopen(f"{API}/reports?metric=events&window={w}&from={iso(day0)}&to={iso(now)}").read())
        pend += r["pending_corrections"]
    el = time.time() - last
    if pend == 0 and el > 5:
        print(f"{el:.1f}s after last POST: no pending corrections (1d, 1h)", file=sys.stderr)
        break
    time.sleep(1)
while True:
    bad, total = check()
    el = time.time() - last
    print(f"{el:.0f}s after last POST: {bad} wrong of {total} points", file=sys.stderr)
    if bad == 0 or el > 300: break
    time.sleep(5)

#!/usr/bin/env python3
"""CPU per saga of two builds, run alternately (issue 18: the outbox's cost).

    benches/outbox_cpu.py BEFORE AFTER [--rounds 4] [--sagas 2000] [--subscribed]

Each run is `valueverse-bench sagas --concurrency 64 --sagas N` (the one beside
BINARY; `BINARY bench sagas` for a build from before the split) on SQLite and on
PostgreSQL (127.0.0.1:5432, a fresh database each time), and reports sagas/s,
the CPU of the bench process (node and load together) and the machine's
(from /proc/stat: PostgreSQL counted) per saga, as JSON lines. With
--subscribed, the store is migrated first and one webhook subscription to
every notified event type is inserted (to a loopback address the node
refuses, so every event makes a notification and a failed attempt in both
builds): the whole notification path, not only the outbox's writes.
"""
import argparse, json, os, resource, sqlite3, subprocess, tempfile, uuid

TYPES = ["model.created", "model.updated", "model.archived", "simulation.finished",
         "commitment.made", "commitment.voided", "plan.created", "plan.cancelled",
         "milestone.completed", "milestone.overdue", "delivery.recorded", "saga.finished"]


def busy_ticks():
    fields = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(fields) - fields[3] - fields[4]


def subscription(sid):
    return json.dumps({"id": sid, "status": "active", "channel": "webhook",
                       "url": "http://127.0.0.1:9/hook", "secret": "a-secret-of-some-length",
                       "event_types": TYPES, "created_at": "2026-12-04T00:00:00Z",
                       "deleted_at": None})


def bench_command(binary):
    """The benchmark binary beside the node binary, or the node's own `bench`."""
    beside = os.path.join(os.path.dirname(binary), "valueverse-bench")
    return [beside] if os.access(beside, os.X_OK) else [binary, "bench"]


def prepare(binary, store, subscribed):
    if store == "postgres":
        db = f"vv_outbox_cpu_{uuid.uuid4().hex[:8]}"
        url = f"postgres://postgres@127.0.0.1:5432/{db}"
    else:
        path = f"{tempfile.gettempdir()}/vv-outbox-cpu-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite://{path}"
    if subscribed:
        subprocess.run([binary, "migrate", "--database-url", url], check=True, capture_output=True)
        sid = str(uuid.uuid4())
        insert = ("INSERT INTO subscriptions (id, version, updated_at_ms, body, status, created_at_ms) "
                  "VALUES ('%s', 1, 0, '%s', 'active', 0)" % (sid, subscription(sid)))
        if store == "postgres":
            subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", insert],
                           check=True)
        else:
            connection = sqlite3.connect(path)
            connection.execute(insert)
            connection.commit()
            connection.close()
    return url


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--subscribed", action="store_true")
    args = parser.parse_args()
    for round_ in range(args.rounds):
        for build, binary in (("before", args.before), ("after", args.after)):
            for store in ("sqlite", "postgres"):
                url = prepare(binary, store, args.subscribed)
                command = bench_command(binary) + ["sagas", "--concurrency", "64", "--sagas",
                           str(args.sagas), "--json", "--database-url", url]
                usage, ticks = resource.getrusage(resource.RUSAGE_CHILDREN), busy_ticks()
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                ticks = busy_ticks() - ticks
                cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                n = result["sagas"]
                print(json.dumps({
                    "round": round_, "build": build, "store": store,
                    "scenario": "subscribed" if args.subscribed else "none",
                    "sagas": n, "sagas_per_s": round(result["sagas_per_second"], 1),
                    "proc_cpu_ms_per_saga": round(cpu * 1000 / n, 3),
                    "sys_cpu_ms_per_saga": round(ticks / 100 * 1000 / n, 3),
                }), flush=True)


if __name__ == "__main__":
    main()

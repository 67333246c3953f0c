#!/usr/bin/env python3
"""Bucket replication figures: backfill speed with 1, 2 and 4 shares, and the
cost of an idle discovery pass over a large bucket.

    scripts/regions.sh start
    eval "$(scripts/regions.sh env | grep ^export)"
    python3 scripts/bench_bucket.py --regionfs target/release/regionfs \\
        --backfill 20000 --shards "1 2 4" --idle 100000

Backfill: one source bucket holding N small objects (written by a raw
parallel client), a fresh destination bucket per run; K `regionfs replicate
--shard i/K` processes, each with its own cache dir, run until the
destination lists N objects. Prints objects/s per K.

Idle: a source bucket holding M objects is replicated by one `regionfs
replicate` until nothing is pending; then, with nothing changing, the next
passes are read from `regionfs status --json` (requests and wall time of the
last pass) and the process's CPU time over them from /proc. Prints requests
and CPU seconds per pass.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ACCESS = os.environ.setdefault("AWS_ACCESS_KEY_ID", "regionfs")
SECRET = os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "regionfs-secret")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_helper import client, mkbuckets  # noqa: E402  (credentials from the environment)
from bench_helper import count as count_under  # noqa: E402


def count(endpoint, name):
    return count_under(endpoint, name, "")[0]


def fill(endpoint, name, n):
    """N objects of 100 B-4 KiB under 100 directories, 32 PUTs in flight."""
    have = count(endpoint, name)
    if have >= n:
        return
    s3 = client(endpoint)

    def put(i):
        body = os.urandom(100 + (i * 7919) % 4000)
        s3.put_object(Bucket=name, Key=f"d{i % 100:02d}/f{i:07d}", Body=body)

    t = time.monotonic()
    with ThreadPoolExecutor(32) as ex:
        list(ex.map(put, range(have, n)))
    print(f"  wrote {n - have} objects into {name} in {time.monotonic() - t:.0f}s", flush=True)


def config(src_ep, src, dst_ep, dst, cache, interval):
    return f"""[source]
name = "us-east"
region = "us-east-1"
bucket = "{src}"
endpoint = "{src_ep}"
access_key_id = "{ACCESS}"
secret_access_key = "{SECRET}"

[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "{dst}"
endpoint = "{dst_ep}"
access_key_id = "{ACCESS}"
secret_access_key = "{SECRET}"

[[rule]]
id = "all"
destination = "eu"
delete_markers = true

[cache]
dir = "{cache}"

[replication]
watch_interval = "{interval}"
"""


def start(binary, conf, shard, log):
    return subprocess.Popen(
        [binary, "replicate", "--shard", shard, "--config", conf],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )


def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def status(binary, conf):
    out = subprocess.run(
        [binary, "status", "--json", "--config", conf], capture_output=True, check=True
    )
    return json.loads(out.stdout)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backfill(a, work):
    src = "bfsrc"
    mkbuckets(a.src, src)
    fill(a.src, src, a.backfill)
    for k in [int(x) for x in a.shards.split()]:
        dst = f"bfdst{k}-{int(time.time())}"
        mkbuckets(a.dst, dst)
        procs, logs = [], []
        for i in range(1, k + 1):
            d = tempfile.mkdtemp(dir=work)
            conf = os.path.join(d, "regionfs.toml")
            with open(conf, "w") as f:
                f.write(config(a.src, src, a.dst, dst, os.path.join(d, "cache"), "10s"))
            log = open(os.path.join(d, "replicate.log"), "w")
            logs.append(log)
            procs.append(start(a.regionfs, conf, f"{i}/{k}", log))
        t = time.monotonic()
        while count(a.dst, dst) < a.backfill:
            if any(p.poll() is not None for p in procs):
                sys.exit(f"a replicate process exited; see {work}")
            time.sleep(1)
        took = time.monotonic() - t
        stop(procs)
        print(
            f"backfill: {a.backfill} objects, {k} share(s): {took:.1f}s, "
            f"{a.backfill / took:.0f} objects/s",
            flush=True,
        )


def idle(a, work):
    src, dst = "idlesrc", "idledst"
    mkbuckets(a.src, src)
    mkbuckets(a.dst, dst)
    fill(a.src, src, a.idle)
    d = tempfile.mkdtemp(dir=work)
    conf = os.path.join(d, "regionfs.toml")
    with open(conf, "w") as f:
        f.write(config(a.src, src, a.dst, dst, os.path.join(d, "cache"), a.interval))
    log = open(os.path.join(d, "replicate.log"), "w")
    p = start(a.regionfs, conf, "1/1", log)
    t = time.monotonic()
    while True:
        time.sleep(5)
        s = status(a.regionfs, conf)
        eu = s["replication"]["eu"]
        if s["discovery"] and s["discovery"][0]["passes"] >= 2 and eu["pending"] == 0:
            break
        if p.poll() is not None:
            sys.exit(f"replicate exited; see {d}")
    print(f"  first copy of {a.idle} objects: {time.monotonic() - t:.0f}s", flush=True)
    before = status(a.regionfs, conf)["discovery"][0]
    cpu0 = cpu_seconds(p.pid)
    # Wait for a.passes more passes (quick ones and the sweeps among them).
    walls, reqs, passes = [], [], before["passes"]
    while passes < before["passes"] + a.passes:
        time.sleep(0.5)
        d0 = status(a.regionfs, conf)["discovery"][0]
        if d0["passes"] > passes:
            passes = d0["passes"]
            walls.append(d0["last_took_ms"] / 1000)
            reqs.append(d0["requests"])
    cpu = cpu_seconds(p.pid) - cpu0
    stop([p])
    print(
        f"idle: {a.idle} objects, {a.passes} passes (every {a.interval}): requests per pass "
        f"{sorted(reqs)} ; wall per pass min {min(walls):.2f}s max {max(walls):.2f}s; "
        f"CPU {cpu:.2f}s over them, {cpu / a.passes:.2f}s per pass",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--regionfs", default="target/release/regionfs")
    ap.add_argument("--src", default=os.environ.get("REGIONFS_ENDPOINT_A", "http://127.0.0.1:18330"))
    ap.add_argument("--dst", default=os.environ.get("REGIONFS_ENDPOINT_B", "http://127.0.0.1:18340"))
    ap.add_argument("--backfill", type=int, default=20000)
    ap.add_argument("--shards", default="1 2 4")
    ap.add_argument("--idle", type=int, default=100000)
    ap.add_argument("--passes", type=int, default=12)
    ap.add_argument("--interval", default="5s")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="regionfs-bench-bucket-")
    print(f"# scripts/bench_bucket.py (work dir {work})", flush=True)
    if a.backfill:
        backfill(a, work)
    if a.idle:
        idle(a, work)


if __name__ == "__main__":
    main()

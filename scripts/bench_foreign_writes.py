#!/usr/bin/env python3
"""Replication lag of versions written by another client.

A raw client (boto3) PUTs RATE objects a second into the source bucket for
SECONDS while `regionfs replicate` runs against the same config; the
destination is listed every 100 ms and the lag of each object is the time from
its PUT returning to its first appearance at the destination. Prints p50, p99,
the maximum and how many never arrived (within 60 s after the last PUT).

    scripts/regions.sh start
    eval "$(scripts/regions.sh env | grep ^export)"
    python3 scripts/bench_foreign_writes.py --config C --rate 100 --seconds 60

The config names the source and one destination (the first), as regionfs does;
`regionfs replicate --config C` must be running.
"""
import argparse
import statistics
import threading
import time
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config


def client(bucket_cfg):
    return boto3.client(
        "s3",
        endpoint_url=bucket_cfg["endpoint"],
        region_name=bucket_cfg["region"],
        aws_access_key_id=bucket_cfg.get("access_key_id"),
        aws_secret_access_key=bucket_cfg.get("secret_access_key"),
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=60)
    a = ap.parse_args()
    with open(a.config, "rb") as f:
        cfg = tomllib.load(f)
    src_cfg, dst_cfg = cfg["source"], cfg["destination"][0]
    src, dst = client(src_cfg), client(dst_cfg)
    prefix = f"{cfg['source'].get('prefix', '')}foreign-{uuid.uuid4().hex[:8]}/"
    put_at = {}
    seen_at = {}
    done = threading.Event()

    def watch():
        pager = dst.get_paginator("list_objects_v2")
        while not done.is_set():
            now = time.monotonic()
            for page in pager.paginate(Bucket=dst_cfg["bucket"], Prefix=prefix):
                for o in page.get("Contents", []):
                    seen_at.setdefault(o["Key"], now)
            time.sleep(0.1)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    def put(key):
        src.put_object(Bucket=src_cfg["bucket"], Key=key, Body=b"x" * 1024)
        put_at[key] = time.monotonic()

    # PUTs start on schedule, several in flight, so one slow PUT does not
    # lower the rate.
    start = time.monotonic()
    n = 0
    with ThreadPoolExecutor(8) as pool:
        while time.monotonic() - start < a.seconds:
            due = start + n / a.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(put, f"{prefix}{n:06d}")
            n += 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen_at) < len(put_at):
        time.sleep(0.2)
    done.set()
    t.join()
    lags = sorted(seen_at[k] - put_at[k] for k in put_at if k in seen_at)
    missed = len(put_at) - len(lags)
    q = statistics.quantiles(lags, n=100) if len(lags) > 1 else [0] * 99
    print(
        f"foreign writes: {len(put_at)} PUTs at {len(put_at) / a.seconds:.0f}/s for {a.seconds}s; "
        f"lag p50 {q[49]:.2f}s p99 {q[98]:.2f}s max {lags[-1] if lags else 0:.2f}s; missed {missed}"
    )


if __name__ == "__main__":
    main()

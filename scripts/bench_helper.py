"""Helpers for scripts/bench.sh: bucket setup, a raw parallel S3 client, and
waiting until objects are durable in a bucket. Runs in the test venv (boto3
comes with moto)."""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=32, retries={"max_attempts": 5}),
    )


def mkbuckets(endpoint, *names):
    s3 = client(endpoint)
    for b in names:
        try:
            s3.create_bucket(Bucket=b)
        except Exception as e:  # already there
            if "BucketAlready" not in str(e):
                raise
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})


def count(endpoint, bucket, prefix):
    s3 = client(endpoint)
    n, size = 0, 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            n += 1
            size += o["Size"]
    return n, size


def wait_objects(endpoint, bucket, prefix, want_n, want_bytes, timeout=1800):
    """Blocks until `want_n` objects with `want_bytes` in total are listed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        n, size = count(endpoint, bucket, prefix)
        if n >= want_n and size >= want_bytes:
            return
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {want_n} objects under {bucket}/{prefix}")


def raw_put_big(endpoint, bucket, key, path):
    cfg = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=8 << 20, max_concurrency=16)
    client(endpoint).upload_file(path, bucket, key, Config=cfg)


def raw_put_small(endpoint, bucket, prefix, src_dir):
    s3 = client(endpoint)
    files = []
    for d in sorted(os.listdir(src_dir)):
        for f in sorted(os.listdir(os.path.join(src_dir, d))):
            files.append((f"{prefix}{d}/{f}", os.path.join(src_dir, d, f)))

    def put(item):
        key, path = item
        with open(path, "rb") as fh:
            s3.put_object(Bucket=bucket, Key=key, Body=fh.read())

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(put, files))


def raw_get(endpoint, bucket, key, out):
    cfg = TransferConfig(multipart_threshold=1 << 40, max_concurrency=1)
    client(endpoint).download_file(bucket, key, out, Config=cfg)


def write_small(root, dirs, per_dir, size):
    """Writes dirs × per_dir files of `size` bytes; prints seconds until the last close."""
    body = os.urandom(size)
    t = time.time()
    for d in range(dirs):
        p = os.path.join(root, f"d{d}")
        os.makedirs(p, exist_ok=True)
        for i in range(per_dir):
            with open(os.path.join(p, f"f{i}"), "wb") as fh:
                fh.write(body)
    print(f"{time.time() - t:.3f}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "mkbuckets":
        mkbuckets(*args)
    elif cmd == "wait":
        wait_objects(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif cmd == "count":
        print(*count(*args))
    elif cmd == "put-big":
        raw_put_big(*args)
    elif cmd == "put-small":
        raw_put_small(*args)
    elif cmd == "get":
        raw_get(*args)
    elif cmd == "write-small":
        write_small(args[0], int(args[1]), int(args[2]), int(args[3]))
    else:
        sys.exit(f"unknown command {cmd}")

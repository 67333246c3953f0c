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


def rmbuckets(endpoint, *names):
    """Deletes every version and delete marker of each bucket, then the
    bucket: SeaweedFS frees a bucket's volumes (each bucket is a
    collection) only with the bucket, and a full run makes more buckets
    than a small disk has volumes for."""
    s3 = client(endpoint)
    for b in names:
        try:
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=b):
                doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                          for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                for i in range(0, len(doomed), 1000):
                    s3.delete_objects(Bucket=b, Delete={"Objects": doomed[i:i + 1000], "Quiet": True})
            s3.delete_bucket(Bucket=b)
        except Exception as e:  # already gone, or the store refused: the run goes on
            if "NoSuchBucket" not in str(e):
                print(f"# cannot delete bucket {b}: {e}", file=sys.stderr)


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
    files = []
    for d in sorted(os.listdir(src_dir)):
        for f in sorted(os.listdir(os.path.join(src_dir, d))):
            files.append((f"{prefix}{d}/{f}", os.path.join(src_dir, d, f)))
    put_files(endpoint, bucket, files)


def put_files(endpoint, bucket, files):
    """PUTs each (key, path) of `files`, 16 at a time."""
    s3 = client(endpoint)

    def put(item):
        key, path = item
        with open(path, "rb") as fh:
            s3.put_object(Bucket=bucket, Key=key, Body=fh.read())

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(put, files))


def raw_get(endpoint, bucket, key, out):
    cfg = TransferConfig(multipart_threshold=1 << 40, max_concurrency=1)
    client(endpoint).download_file(bucket, key, out, Config=cfg)


def raw_get_ranged(endpoint, bucket, key, out):
    """The object in 8 MiB ranged GETs, 16 at a time, each written at its
    offset (the raw client's other way to read one large object)."""
    s3 = client(endpoint)
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    chunk = 8 << 20
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def part(off):
        end = min(off + chunk, size) - 1
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{end}")["Body"].read()
        os.pwrite(fd, body, off)

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(part, range(0, size, chunk)))
    os.close(fd)


def write_small(root, dirs, per_dir, size, fsync=False):
    """Writes dirs × per_dir files of `size` bytes (each fsynced before its
    close with `fsync`); prints seconds until the last close."""
    body = os.urandom(size)
    t = time.time()
    for d in range(dirs):
        p = os.path.join(root, f"d{d}")
        os.makedirs(p, exist_ok=True)
        for i in range(per_dir):
            with open(os.path.join(p, f"f{i}"), "wb") as fh:
                fh.write(body)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
    print(f"{time.time() - t:.3f}")


def make_tree(root, files):
    """A source-like tree, the same on every run: `files` files of 100 B to
    64 KiB, 10 per directory, 10 directories per parent. Prints the total
    bytes."""
    import random
    rng = random.Random(files)
    sizes = (100, 600, 2_000, 9_000, 30_000, 65_536)
    total = 0
    for i in range(files):
        d = os.path.join(root, f"m{i // 10000:02d}", f"d{i // 100:04d}", f"e{i // 10 % 10}")
        os.makedirs(d, exist_ok=True)
        size = rng.choice(sizes)
        with open(os.path.join(d, f"f{i:06d}.c"), "wb") as fh:
            fh.write(rng.randbytes(size))
        total += size
    print(total)


def make_source_tree(root, files):
    """A source tree as tar would carry it, the same on every run: `files`
    files in directories of 10 (100 directories per parent), sizes drawn
    log-normally and kept within 100 B to 1 MiB (about 15 KiB each on
    average: 150 MiB for 10,000), modes 644, 755 or 600, and mtimes spread
    over the last three years. Prints the total bytes."""
    import random
    rng = random.Random(files * 7 + 1)
    now = time.time()
    total = 0
    for i in range(files):
        d = os.path.join(root, f"p{i // 1000:02d}", f"d{i // 10:04d}")
        os.makedirs(d, exist_ok=True)
        size = int(min(1 << 20, max(100, rng.lognormvariate(8.6, 1.45))))
        path = os.path.join(d, f"f{i:05d}.{rng.choice(('c', 'h', 'rs', 'py', 'md'))}")
        with open(path, "wb") as fh:
            fh.write(rng.randbytes(size))
        os.chmod(path, rng.choice((0o644, 0o644, 0o644, 0o755, 0o600)))
        t = now - rng.uniform(0, 3 * 365 * 86400)
        os.utime(path, (t, t))
        total += size
    print(total)


def untar_fsync(archive, dest):
    """Extracts `archive` into `dest` as tar does (modes, mtimes), fsyncing
    each file before its close: the physical floor of a durable close per
    file on local disk. Prints seconds."""
    import tarfile
    t = time.time()
    with tarfile.open(archive) as tf:
        for m in tf:
            path = os.path.join(dest, m.name)
            if m.isdir():
                os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as out:
                out.write(tf.extractfile(m).read())
                out.flush()
                os.fsync(out.fileno())
            os.chmod(path, m.mode & 0o7777)
            os.utime(path, (m.mtime, m.mtime))
    print(f"{time.time() - t:.3f}")


def raw_put_tree(endpoint, bucket, prefix, root):
    """PUTs every file under `root` as `prefix` + its relative path, 16 at a
    time (what a parallel S3 client takes for the same files)."""
    files = []
    for d, _, names in os.walk(root):
        for f in names:
            p = os.path.join(d, f)
            files.append((prefix + os.path.relpath(p, root), p))
    put_files(endpoint, bucket, files)


def versions_per_object(endpoint, bucket, prefix):
    """Versions of files per file under `prefix`: not directory markers
    (keys ending in /) nor regionfs's own objects (`.regionfs-dir/` holding a
    directory's attributes, `.regionfs-index/`)."""
    s3 = client(endpoint)
    keys, versions = set(), 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            k = v["Key"]
            if not k.endswith("/") and not k.startswith(".regionfs-") and "/.regionfs-" not in k:
                keys.add(k)
                versions += 1
    print(f"{versions / max(len(keys), 1):.3f}")


def random_writes(path, size_mib, count, seed=1):
    """`count` writes of 4 KiB at random 4 KiB-aligned offsets of an existing
    file of `size_mib` MiB, one at a time, then one fsync; prints IOPS
    (writes per second, the fsync included)."""
    import random
    rng = random.Random(seed)
    blocks = (size_mib << 20) // 4096
    body = os.urandom(4096)
    fd = os.open(path, os.O_RDWR)
    t = time.time()
    for _ in range(count):
        os.pwrite(fd, body, rng.randrange(blocks) * 4096)
    os.fsync(fd)
    s = time.time() - t
    os.close(fd)
    print(f"{count / s:.1f}")


def steady_writes(root, rate, seconds, size, writers=4):
    """Writes `rate` files a second for `seconds` (4 KiB each by default), from
    `writers` threads each keeping its share of the rate: one writer alone
    cannot close 200 durable files a second here (each close waits for a sync)."""
    import threading
    body = os.urandom(size)
    os.makedirs(root, exist_ok=True)
    start = time.time()
    counts = [0] * writers

    def writer(w):
        n = 0
        while time.time() - start < seconds:
            due = start + n * writers / rate
            if time.time() < due:
                time.sleep(due - time.time())
            with open(os.path.join(root, f"s{w}-{n}"), "wb") as fh:
                fh.write(body)
            n += 1
        counts[w] = n

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sum(counts))


def lag_quantiles(metrics_url, destination, qs=(0.5, 0.99)):
    """Quantiles of regionfs_replication_lag_seconds from its histogram buckets
    (linear within a bucket, as Prometheus' histogram_quantile does)."""
    import urllib.request
    text = urllib.request.urlopen(metrics_url).read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("regionfs_replication_lag_seconds_bucket") and f'destination="{destination}"' in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1]
    out = []
    for q in qs:
        rank = q * total
        prev_le, prev_c = 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                if le == float("inf"):
                    out.append(prev_le)
                else:
                    out.append(prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-9)))
                break
            prev_le, prev_c = le, c
    print(int(total), *[f"{v:.3f}" for v in out])


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "mkbuckets":
        mkbuckets(*args)
    elif cmd == "rmbuckets":
        rmbuckets(*args)
    elif cmd == "wait":
        wait_objects(args[0], args[1], args[2], int(args[3]), int(args[4]),
                     *(int(a) for a in args[5:6]))
    elif cmd == "count":
        print(*count(*args))
    elif cmd == "put-big":
        raw_put_big(*args)
    elif cmd == "put-small":
        raw_put_small(*args)
    elif cmd == "get":
        raw_get(*args)
    elif cmd == "steady":
        steady_writes(args[0], float(args[1]), float(args[2]), int(args[3]))
    elif cmd == "lag":
        lag_quantiles(args[0], args[1])
    elif cmd == "mktree":
        make_tree(args[0], int(args[1]))
    elif cmd == "write-small":
        write_small(args[0], int(args[1]), int(args[2]), int(args[3]), args[4:5] == ["fsync"])
    elif cmd == "get-ranged":
        raw_get_ranged(*args)
    elif cmd == "mksrc":
        make_source_tree(args[0], int(args[1]))
    elif cmd == "untar-fsync":
        untar_fsync(args[0], args[1])
    elif cmd == "put-tree":
        raw_put_tree(*args)
    elif cmd == "versions":
        versions_per_object(*args)
    elif cmd == "randwrite":
        random_writes(args[0], int(args[1]), int(args[2]))
    else:
        sys.exit(f"unknown command {cmd}")

"""One worker of the random-operations stress test (tests/stress.rs).

    python3 stress_ops.py TREE KEEP SEED SECONDS

Runs random namespace and data operations in TREE for SECONDS: create,
write at offsets, truncate, rename of files and of whole directories (into
and out of each other, over existing names), symlink, mkfifo, unlink, rmdir,
chmod, setxattr/removexattr and fsync. The errors POSIX allows for a random
operation (no such name, not empty, ...) are expected; any other (EIO above
all) is printed and makes the exit status 1. Then writes a few files in KEEP
and prints, as the last line, a JSON object mapping each of them (relative
to KEEP) to the SHA-256 of the bytes its last close wrote.
"""

import errno
import hashlib
import json
import os
import random
import sys
import time

EXPECTED = {
    errno.ENOENT,
    errno.EEXIST,
    errno.ENOTEMPTY,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EINVAL,
    errno.ENODATA,
    # Opening a fifo nobody reads (the workers never block on one).
    errno.ENXIO,
}
NAMES = ["a", "b", "c", "d", "e"]


def main():
    tree, keep, seed, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(seed)
    os.makedirs(tree, exist_ok=True)
    unexpected = []
    counts = {}

    def pick(depth=3):
        parts = [rng.choice(NAMES) for _ in range(rng.randint(1, depth))]
        return os.path.join(tree, *parts)

    def data():
        n = rng.choice([0, 1, 100, 4096, 70000, 300000])
        return os.urandom(n)

    def op_create():
        fd = os.open(pick(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
        try:
            os.write(fd, data())
        finally:
            os.close(fd)

    def op_write():
        fd = os.open(pick(), os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.pwrite(fd, data(), rng.choice([0, 10, 5000, 100000]))
            if rng.random() < 0.3:
                os.fsync(fd)
        finally:
            os.close(fd)

    def op_truncate():
        os.truncate(pick(), rng.choice([0, 1, 5000, 200000]))

    def op_mkdir():
        os.mkdir(pick())

    def op_rename():
        os.rename(pick(), pick())

    def op_symlink():
        os.symlink("target-" + rng.choice(NAMES), pick())

    def op_mkfifo():
        os.mkfifo(pick(), 0o640)

    def op_unlink():
        os.unlink(pick())

    def op_rmdir():
        os.rmdir(pick())

    def op_chmod():
        p = pick()
        if not os.path.islink(p):
            os.chmod(p, rng.choice([0o600, 0o644, 0o755, 0o700]))

    def op_xattr():
        p = pick()
        # Linux keeps user.* attributes on regular files and directories only.
        if not (os.path.isfile(p) or os.path.isdir(p)) or os.path.islink(p):
            return
        if rng.random() < 0.6:
            os.setxattr(p, "user.stress", os.urandom(rng.randint(1, 20)))
        else:
            os.removexattr(p, "user.stress")

    def op_open_unlink_write():
        # Writes through a descriptor whose name goes meanwhile.
        p = pick()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
        try:
            os.write(fd, data())
            os.unlink(p)
            os.write(fd, data())
        finally:
            os.close(fd)

    ops = [
        (op_create, 8),
        (op_write, 5),
        (op_truncate, 2),
        (op_mkdir, 5),
        (op_rename, 8),
        (op_symlink, 1),
        (op_mkfifo, 1),
        (op_unlink, 3),
        (op_rmdir, 2),
        (op_chmod, 2),
        (op_xattr, 2),
        (op_open_unlink_write, 1),
    ]
    population = [o for o, w in ops for _ in range(w)]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        op = rng.choice(population)
        try:
            op()
            counts[op.__name__] = counts.get(op.__name__, 0) + 1
        except OSError as e:
            if e.errno not in EXPECTED:
                unexpected.append(f"{op.__name__}: {e}")
    os.makedirs(keep, exist_ok=True)
    kept = {}
    for i in range(5):
        name = f"kept-{i}"
        for _ in range(rng.randint(1, 3)):
            body = os.urandom(rng.choice([10, 5000, 70000]))
            with open(os.path.join(keep, name), "wb") as f:
                f.write(body)
        kept[name] = hashlib.sha256(body).hexdigest()
    for u in unexpected[:20]:
        print("unexpected:", u, file=sys.stderr)
    print("ops:", sum(counts.values()), counts, file=sys.stderr)
    print(json.dumps(kept))
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()

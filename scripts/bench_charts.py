"""Charts of one scripts/bench.sh run, from its raw results.

    python scripts/bench_charts.py RAW [LAG_HISTOGRAM] OUTDIR

RAW is the run's `--out` file with `.raw` appended (lines: workload system
value), LAG_HISTOGRAM its `.lag-histogram` (the regionfs_replication_lag_seconds
buckets at the end of the lag phase; "-" when there is none). Writes to OUTDIR:

- ratios.png: regionfs's median against each peer's, per workload, with the
  target where there is one (times: lower is better; IOPS: higher is better);
- lag.png: the share of versions replicated within each lag (the histogram's
  cumulative buckets);
- rss.png: peak RSS against the files the mount has seen (the scale phase's
  tar of N files, and the rss phase's 1 x and 10 x batches).
"""
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (workload, peer, target, higher is better)
RATIOS = [
    ("big-close", "local", 1.25, False),
    ("big-durable", "raw", 1.15, False),
    ("small-close", "rclone", 1.0, False),
    ("small-close", "local-fsync", 3.0, False),
    ("small-durable", "raw", 1.2, False),
    ("repl", "rclone-sync", 0.7, False),
    ("ls-cold", "s3fs", 0.5, False),
    ("read-cold", "raw", 1.11, False),
    ("read-cold", "raw-ranged", 1.11, False),
    ("read-warm", "local-read", 1.25, False),
    ("tar-exit", "rclone", 1.0, False),
    ("tar-exit", "local-fsync", None, False),
    ("tar-durable", "raw", 1.3, False),
    ("git-clone", "rclone", 1.0, False),
    ("randwrite-iops", "local", 0.8, True),
    ("small-busy-close", "rclone", 1.0, False),
    ("ls-foreign", "s3fs", 0.5, False),
]


def medians(path):
    rows = {}
    for line in open(path):
        parts = line.split()
        if len(parts) == 3:
            rows.setdefault((parts[0], parts[1]), []).append(float(parts[2]))
    return {k: statistics.median(v) for k, v in rows.items()}


def ratios_chart(med, out):
    bars = []
    for w, peer, target, higher in RATIOS:
        a, b = med.get((w, "regionfs")), med.get((w, peer))
        if a is None or not b:
            continue
        bars.append((f"{w} / {peer}", a / b, target, higher))
    for n in sorted({int(w.split("-")[1]) for (w, _) in med if w.startswith("tar-") and w.endswith("-per-file")}):
        a, b = med.get((f"tar-{n}-per-file", "regionfs")), med.get((f"tar-{n}-per-file", "rclone"))
        if a and b:
            bars.append((f"tar {n:,} files, per file / rclone", a / b, 1.0, False))
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(bars) + 1.2))
    y = range(len(bars))
    colors = []
    for _, v, target, higher in bars:
        met = target is None or (v >= target if higher else v <= target)
        colors.append("#3a7d44" if met else "#c0392b")
    ax.barh(list(y), [v for _, v, _, _ in bars], color=colors)
    for i, (_, v, target, higher) in enumerate(bars):
        if target is not None:
            ax.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(list(y), [label for label, _, _, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("regionfs ÷ peer (medians; black tick: target; IOPS: higher is better)")
    ax.set_title("regionfs against each peer")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def lag_chart(path, out):
    if not path or path == "-" or not os.path.exists(path):
        return False
    points = []
    for line in open(path):
        if 'le="' not in line:
            continue
        le = line.split('le="')[1].split('"')[0]
        if le == "+Inf":
            continue
        points.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = max((c for _, c in points), default=0)
    if total == 0:
        return False
    points.sort()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.step([le for le, _ in points], [100 * c / total for _, c in points], where="post")
    ax.set_xscale("log")
    ax.set_xlabel("replication lag (s, from close to the replica present)")
    ax.set_ylabel("% of versions replicated within")
    ax.set_ylim(0, 101)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Replication lag at a steady 200 files/s ({int(total):,} versions)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def rss_chart(med, out):
    tar = sorted(
        (int(w.split("-")[1]), v)
        for (w, s), v in med.items()
        if s == "regionfs" and w.startswith("tar-") and w.endswith("-rss") and w.count("-") == 2
    )
    anon = sorted(
        (int(w.split("-")[1]), v)
        for (w, s), v in med.items()
        if s == "regionfs" and w.startswith("tar-") and w.endswith("-rss-anon")
    )
    if not tar:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([n for n, _ in tar], [v for _, v in tar], marker="o", label="peak RSS (tar of N files)")
    if anon:
        ax.plot([n for n, _ in anon], [v for _, v in anon], marker="s", label="of which anonymous")
    ax.axhline(64, color="black", linestyle=":", linewidth=1, label="target 64 MiB")
    ax.set_xscale("log")
    ax.set_ylim(0, max(70, max(v for _, v in tar) * 1.1))
    ax.set_xlabel("files written through the mount")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("regionfs memory against file count")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    raw, lag, outdir = sys.argv[1:]
    os.makedirs(outdir, exist_ok=True)
    med = medians(raw)
    made = [
        name
        for name, ok in (
            ("ratios.png", ratios_chart(med, os.path.join(outdir, "ratios.png"))),
            ("lag.png", lag_chart(lag, os.path.join(outdir, "lag.png"))),
            ("rss.png", rss_chart(med, os.path.join(outdir, "rss.png"))),
        )
        if ok
    ]
    print(f"# charts in {outdir}: {', '.join(made) or 'none (no rows for them)'}")


if __name__ == "__main__":
    main()

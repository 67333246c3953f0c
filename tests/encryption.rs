//! Server-side encryption: every version regionfs writes to a bucket is
//! encrypted as that bucket's section says, a replica with its destination's
//! own KMS key (S3's `ReplicaKmsKeyID`); reads, multipart uploads, replication
//! and `verify` work on encrypted objects. On moto, which implements SSE-KMS
//! with its own KMS.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait_for, Mount, Region, Regions};

/// `sse` and `kms_key_id` of `key`'s current object, as the store says.
fn encryption_of(region: &Region, bucket: &str, key: &str) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_str(&common::moto_iam(&["head", &region.endpoint, bucket, key])).unwrap();
    (
        v["sse"].as_str().unwrap_or("none").to_string(),
        v["kms_key_id"].as_str().unwrap_or("none").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_bucket_encrypts_with_its_own_kms_key_and_everything_still_works() {
    let r = Regions::with(Region::moto("us-east-1"), Region::moto("eu-west-1")).await;
    let (key_a, key_b) = (
        common::moto_iam(&["kms-key", &r.a.endpoint]),
        common::moto_iam(&["kms-key", &r.b.endpoint]),
    );
    let cache = tempfile::tempdir().unwrap();
    let config = r
        .config(cache.path(), "")
        .replacen(
            &format!("bucket = \"{}\"\n", r.src_bucket),
            &format!(
                "bucket = \"{}\"\nsse = \"aws:kms\"\nkms_key_id = \"{key_a}\"\n",
                r.src_bucket
            ),
            1,
        )
        .replacen(
            &format!("bucket = \"{}\"\n", r.dst_bucket),
            &format!(
                "bucket = \"{}\"\nsse = \"aws:kms\"\nkms_key_id = \"{key_b}\"\n",
                r.dst_bucket
            ),
            1,
        );
    assert_eq!(config.matches("sse = \"aws:kms\"").count(), 2, "{config}");
    let mut m = Mount::start(&config);
    // A small file (one PUT) and a 20 MB one (multipart).
    let big: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.path("small.txt"), b"secret notes").unwrap();
    std::fs::write(m.path("big.bin"), &big).unwrap();
    // A rename makes a server-side copy.
    std::fs::write(m.path("before.txt"), b"renamed").unwrap();
    std::fs::rename(m.path("before.txt"), m.path("after.txt")).unwrap();
    wait_for("replication", Duration::from_secs(120), || {
        let s = m.status(None);
        (s["uploads"]["pending"] == 0 && s["replication"]["eu"]["pending"] == 0).then_some(())
    });
    for key in ["small.txt", "big.bin", "after.txt"] {
        assert_eq!(
            encryption_of(&r.a, &r.src_bucket, key),
            ("aws:kms".to_string(), key_a.clone()),
            "{key} in the source"
        );
        assert_eq!(
            encryption_of(&r.b, &r.dst_bucket, key),
            ("aws:kms".to_string(), key_b.clone()),
            "{key}'s replica, under the destination's key"
        );
    }
    // Reads after a remount (nothing cached in memory), whole and ranged.
    assert!(m.unmount().success(), "{}", m.log_text());
    m.remount();
    assert_eq!(std::fs::read(m.path("small.txt")).unwrap(), b"secret notes");
    assert_eq!(std::fs::read(m.path("after.txt")).unwrap(), b"renamed");
    let got = std::fs::read(m.path("big.bin")).unwrap();
    assert!(got == big, "the 20 MB file reads back whole");
    // verify compares what an SSE-KMS ETag cannot say through --deep.
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");
    let deep = common::regionfs_cli(&["verify", "--deep"], &m.config);
    assert_eq!(
        deep.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&deep.stdout),
        String::from_utf8_lossy(&deep.stderr)
    );
}

#[test]
fn a_kms_key_without_sse_kms_is_refused_naming_the_field() {
    let text = "[source]\nname = \"a\"\nregion = \"us-east-1\"\nbucket = \"b\"\nsse = \"AES256\"\nkms_key_id = \"k\"\n";
    let e = regionfs::config::Config::parse(text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("source.kms_key_id"), "{e}");
    let text =
        "[source]\nname = \"a\"\nregion = \"us-east-1\"\nbucket = \"b\"\nsse = \"aws:kms:dsse\"\n";
    let e = regionfs::config::Config::parse(text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("source.sse"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_says_which_encryption_a_store_takes() {
    // SeaweedFS 4 keeps SSE-S3 (AES256) and, without a KMS configured,
    // answers SSE-KMS writes with 500 InternalError: found by the probe,
    // not by a first upload retried for ever.
    let r = Regions::start().await;
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regionfs.toml");
    let with = |sse: &str| {
        r.config(cache.path(), "").replacen(
            &format!("bucket = \"{}\"\n", r.src_bucket),
            &format!("bucket = \"{}\"\n{sse}\n", r.src_bucket),
            1,
        )
    };
    let probe = |text: String| {
        std::fs::write(&path, text).unwrap();
        let o = Command::new(common::regionfs_bin())
            .args(["check-config", "--probe"])
            .arg(&path)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, out) = probe(with("sse = \"AES256\""));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("encryption: AES256 accepted"), "{out}");
    // ... and checks and keeps CRC-64/NVME.
    assert!(
        out.contains("checksums: CRC-64/NVME checked and kept"),
        "{out}"
    );
    let (code, out) = probe(with("sse = \"aws:kms\"\nkms_key_id = \"alias/backup\""));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("FAIL  us-east: encryption: a write with sse = aws:kms with key alias/backup was refused"),
        "{out}"
    );
    // The probe leaves nothing behind.
    let left = common::bucket_contents(&r.src, "").await;
    assert!(left.is_empty(), "{:?}", left.keys());
}

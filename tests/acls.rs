//! Object ACLs: the source's canned ACL on every version regionfs writes, ACL
//! replication, `owner_override = "destination"`, and destinations without
//! ACLs — against SeaweedFS and moto, through the real mounted binary.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{bucket_name, wait_for, Mount, Region, Regions, ACCESS_KEY, SECRET_KEY};
use regionfs::store::{Acl, AclBody, Grantee, ObjectStore, S3Store};

const DRAIN: Duration = Duration::from_secs(180);
const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

fn wait_replicated(m: &Mount, dests: &[&str]) {
    wait_for("replication to drain", DRAIN, || {
        let s = m.status(None);
        let done = s["uploads"]["pending"] == 0
            && dests.iter().all(|d| {
                s["replication"][*d]["pending"] == 0 && s["replication"][*d]["completed"] != 0
            });
        done.then_some(())
    });
}

fn public_read(acl: &Acl) -> bool {
    acl.grants
        .iter()
        .any(|(g, p)| *g == Grantee::Group(ALL_USERS.into()) && p == "READ")
}

async fn current_acl(s: &S3Store, key: &str) -> Acl {
    s.get_acl(key, None).await.unwrap()
}

/// `[source] acl = "public-read"` added to a test config.
fn with_source_acl(config: String, acl: &str) -> String {
    config.replacen(
        "[[destination]]",
        &format!("acl = \"{acl}\"\n\n[[destination]]"),
        1,
    )
}

fn write_with_tag(path: &std::path::Path, body: &[u8], tag: (&str, &str)) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(body).unwrap();
    let name = std::ffi::CString::new(format!("user.tag.{}", tag.0)).unwrap();
    let v = tag.1;
    let rc =
        unsafe { libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_read_file_replicates_with_the_same_grants_and_verify_compares_them() {
    let r = Regions::start().await;
    // SeaweedFS buckets start as BucketOwnerEnforced (ACLs off), as on S3.
    r.src.set_object_ownership("ObjectWriter").await.unwrap();
    r.dst.set_object_ownership("ObjectWriter").await.unwrap();
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&with_source_acl(r.config(c.path(), ""), "public-read"));
    std::fs::create_dir(m.path("site")).unwrap();
    std::fs::write(m.path("site/index.html"), b"<h1>hi</h1>").unwrap();
    std::fs::write(m.path("plain.txt"), b"plain").unwrap();
    wait_replicated(&m, &["eu"]);

    let src_acl = current_acl(&r.src, "site/index.html").await;
    assert!(public_read(&src_acl), "source ACL: {src_acl:?}");
    let replica_acl = current_acl(&r.dst, "site/index.html").await;
    assert!(public_read(&replica_acl), "replica ACL: {replica_acl:?}");
    assert_eq!(replica_acl.normalized(), src_acl.normalized());
    assert_eq!(
        r.dst
            .get("site/index.html", Default::default())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        &b"<h1>hi</h1>"[..]
    );
    let s = m.status(None);
    assert_eq!(s["acls"]["eu"], "enabled", "{s}");
    assert_eq!(s["replication"]["eu"]["failed"], 0);

    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("0 difference(s)"), "{out}");
    // Someone makes the replica private: verify names the ACL difference.
    r.dst
        .put_acl("plain.txt", None, &AclBody::Canned("private".into()))
        .await
        .unwrap();
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("plain.txt → eu: ACL differs"), "{out}");
    assert!(out.contains("AllUsers: READ"), "{out}");
    // resync redoes the task: the replica is current, so only its ACL is set.
    let resync = common::regionfs_cli(&["resync"], &m.config);
    assert!(
        resync.status.success(),
        "{}",
        String::from_utf8_lossy(&resync.stderr)
    );
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");
    // Another client makes the source version private after it was copied
    // public: verify names it, resync makes the replica private too.
    r.src
        .put_acl("site/index.html", None, &AclBody::Canned("private".into()))
        .await
        .unwrap();
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("site/index.html → eu: ACL differs"), "{out}");
    let resync = common::regionfs_cli(&["resync"], &m.config);
    assert!(resync.status.success());
    let replica_acl = current_acl(&r.dst, "site/index.html").await;
    assert!(!public_read(&replica_acl), "replica ACL: {replica_acl:?}");
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn owner_override_gives_the_destination_owner_full_control_instead_of_the_source_acl() {
    let (a, b) = (Region::moto("us-east-1"), Region::moto("eu-west-1"));
    let (sb, eb, kb) = (bucket_name("src"), bucket_name("own"), bucket_name("copy"));
    let src = a.versioned_bucket(&sb).await;
    let owned = b.versioned_bucket(&eb).await;
    let copied = b.versioned_bucket(&kb).await;
    let c = tempfile::tempdir().unwrap();
    let creds = format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"");
    let text = format!(
        r#"[source]
name = "us"
region = "us-east-1"
bucket = "{sb}"
endpoint = "{}"
acl = "public-read"
{creds}

[[destination]]
name = "owned"
region = "eu-west-1"
bucket = "{eb}"
endpoint = "{}"
{creds}

[[destination]]
name = "copied"
region = "eu-west-1"
bucket = "{kb}"
endpoint = "{}"
{creds}

[[rule]]
id = "to-other-account"
destination = "owned"
owner_override = "destination"

[[rule]]
id = "same-grants"
destination = "copied"

[cache]
dir = "{}"
"#,
        a.endpoint,
        b.endpoint,
        b.endpoint,
        c.path().join("cache").display()
    );
    let m = Mount::start(&text);
    std::fs::write(m.path("report.pdf"), b"%PDF-1.7 ...").unwrap();
    wait_replicated(&m, &["owned", "copied"]);

    let source = current_acl(&src, "report.pdf").await;
    assert!(public_read(&source), "{source:?}");
    let copy = current_acl(&copied, "report.pdf").await;
    assert_eq!(
        copy.normalized(),
        source.normalized(),
        "grants copied as they are"
    );
    let over = current_acl(&owned, "report.pdf").await;
    assert!(
        !public_read(&over),
        "owner override drops the source's grants: {over:?}"
    );
    assert!(
        over.grants
            .iter()
            .any(|(g, p)| *g == Grantee::User(over.owner.clone()) && p == "FULL_CONTROL"),
        "the destination bucket's owner has full control: {over:?}"
    );
    let (code, out) = common::verify(&m.config);
    assert_eq!(code, Some(0), "{out}");
    // moto keeps no checksum: the replica carries the CRC of the bytes
    // closed as metadata, and the probe says so.
    let replica = copied.head("report.pdf", None).await.unwrap();
    assert_eq!(
        replica.metadata.get(regionfs::store::CHECKSUM_META),
        Some(&regionfs::store::checksum::Crc64::of(b"%PDF-1.7 ...").to_base64()),
        "{replica:?}"
    );
    let out = probe(&m.config);
    assert!(
        out.contains("checksums: CRC-64/NVME neither checked nor kept"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_without_acls_gets_bytes_metadata_and_tags_with_one_warning() {
    let r = Regions::start().await;
    r.src.set_object_ownership("ObjectWriter").await.unwrap();
    // The destination keeps SeaweedFS's default: BucketOwnerEnforced, ACLs off.
    let c = tempfile::tempdir().unwrap();
    let m = Mount::start(&with_source_acl(r.config(c.path(), ""), "public-read"));
    for i in 0..3 {
        write_with_tag(
            &m.path(&format!("f{i}.txt")),
            format!("file {i}").as_bytes(),
            ("class", "gold"),
        );
    }
    wait_replicated(&m, &["eu"]);
    let s = m.status(None);
    assert_eq!(s["replication"]["eu"]["failed"], 0, "{s}");
    assert_eq!(s["replication"]["eu"]["completed"], 3, "{s}");
    let eu = s["acls"]["eu"].as_str().unwrap_or_default().to_string();
    assert!(
        eu.starts_with("not supported") && eu.contains("BucketOwnerEnforced"),
        "{s}"
    );
    assert_eq!(s["acls"]["us-east"], "enabled", "{s}");
    for i in 0..3 {
        let key = format!("f{i}.txt");
        let got = r.dst.get(&key, Default::default()).await.unwrap();
        assert_eq!(
            got.info.metadata.get("mode").map(String::as_str),
            Some("33188")
        );
        assert_eq!(got.bytes().await.unwrap(), format!("file {i}").as_bytes());
        assert_eq!(r.dst.get_tags(&key, None).await.unwrap()["class"], "gold");
        assert!(public_read(&current_acl(&r.src, &key).await));
    }
    let warnings = m
        .log_text()
        .matches("object ACLs are not supported here")
        .count();
    assert_eq!(warnings, 1, "one warning per bucket:\n{}", m.log_text());

    let out = probe(&m.config);
    assert!(
        out.contains("ok    us-east:") && out.contains("object ACLs: supported"),
        "{out}"
    );
    assert!(
        out.contains("ok    eu:") && out.contains("object ACLs: not supported"),
        "{out}"
    );
}

/// What `check-config --probe` prints for `config`.
fn probe(config: &std::path::Path) -> String {
    let o = std::process::Command::new(common::regionfs_bin())
        .args(["check-config", "--probe"])
        .arg(config)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

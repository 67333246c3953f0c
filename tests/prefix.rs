//! A mount of a prefix of the bucket (`[source] prefix`, written without its
//! trailing slash as users do): what it writes (files, directory markers and
//! attributes, the attribute index) stays under `prefix/`; objects outside it,
//! even ones sharing its first letters, are neither shown nor touched; and
//! `resync` and `verify` work on the same subtree. On SeaweedFS and on moto.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use regionfs::store::ObjectStore;

const DRAIN: Duration = Duration::from_secs(120);
/// Objects of other users of the bucket.
const OUTSIDE: [(&str, &str); 3] = [
    ("team-bob/x.txt", "bob's"),
    ("team-bfile.txt", "a sibling"),
    ("team-c/d/y", "another team's"),
];

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The destination's objects, all of them under the prefix.
async fn destination_under_prefix(r: &Regions) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dst = bucket_contents(&r.dst, "").await;
    assert!(
        dst.keys().all(|k| k.starts_with("team-b/")),
        "{:?}",
        dst.keys()
    );
    dst
}

/// `regionfs verify`: its exit code and report.
fn verify(m: &Mount) -> (Option<i32>, String) {
    let v = regionfs_cli(&["verify"], &m.config);
    (
        v.status.code(),
        String::from_utf8_lossy(&v.stdout).into_owned(),
    )
}

/// `phantoms`: the store lists a prefix whose keys are all delete-marked
/// (moto; S3 does not), so a renamed-away directory is still listed.
async fn a_prefix_mount_keeps_to_its_prefix(r: Regions, phantoms: bool) {
    for (k, v) in OUTSIDE {
        put_bytes(&r.src, k, v.as_bytes().to_vec()).await;
    }
    put_bytes(&r.src, "team-b/seed.txt", b"seed".to_vec()).await;
    let c = tempfile::tempdir().unwrap();
    let config =
        r.config(c.path(), "")
            .replacen("[source]\n", "[source]\nprefix = \"team-b\"\n", 1);
    let mut m = Mount::start(&config);
    assert_eq!(names(&m.dir), ["seed.txt"], "only what is under team-b/");
    sh(&format!(
        "cd {0} && echo hi > file.txt && mkdir -m 750 d && echo y > d/y && mv d e \
         && mv file.txt f2.txt && chmod 600 f2.txt && mkdir -p g/h",
        m.dir.display()
    ));
    m.wait_uploaded(DRAIN);
    assert!(m.unmount().success());

    let all = bucket_contents(&r.src, "").await;
    for k in all.keys() {
        assert!(
            k.starts_with("team-b/") || OUTSIDE.iter().any(|(o, _)| o == k),
            "`{k}` is outside the prefix: {:?}",
            all.keys().collect::<Vec<_>>()
        );
    }
    for (k, v) in OUTSIDE {
        assert_eq!(all[k], v.as_bytes(), "{k} untouched");
        let page = r.src.list_versions(k, None, None).await.unwrap();
        let versions = page.versions.iter().filter(|v| v.key == k).count();
        assert_eq!(versions, 1, "{k}: no new version");
    }
    assert_eq!(all["team-b/f2.txt"], b"hi\n");
    assert_eq!(all["team-b/e/y"], b"y\n");
    assert!(
        all.contains_key("team-b/e/"),
        "the renamed directory's marker"
    );
    assert!(all.contains_key("team-b/g/h/"));
    assert!(
        !all.keys()
            .any(|k| k == "team-b/file.txt" || k.starts_with("team-b/d/")),
        "nothing left of the old names: {:?}",
        all.keys().collect::<Vec<_>>()
    );

    // A remount shows the tree and its attributes from under the prefix.
    m.remount();
    let mut want = vec!["e", "f2.txt", "g", "seed.txt"];
    if phantoms {
        want.insert(0, "d");
        assert!(!m.path("d").exists(), "listed, but not there");
    }
    assert_eq!(names(&m.dir), want);
    let mode = |p: &str| std::fs::metadata(m.path(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("e"), 0o750);
    assert_eq!(mode("f2.txt"), 0o600);
    assert!(m.unmount().success());

    // What this mount wrote is replicated; the seed (another writer's) and
    // the outside objects are not.
    let dst = destination_under_prefix(&r).await;
    assert_eq!(
        dst.get("team-b/f2.txt").map(Vec::as_slice),
        Some(&b"hi\n"[..])
    );
    // verify sees the seed missing; resync copies it, and only what is
    // under the prefix.
    let (code, out) = verify(&m);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("team-b/seed.txt"), "{out}");
    let s = regionfs_cli(&["resync"], &m.config);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let dst = destination_under_prefix(&r).await;
    assert_eq!(
        dst.get("team-b/seed.txt").map(Vec::as_slice),
        Some(&b"seed"[..])
    );
    let (code, out) = verify(&m);
    assert_eq!(code, Some(0), "{out}");

    // A replica mount of the destination shows the same subtree, and
    // nothing of the destination outside it.
    put_bytes(&r.dst, "team-bob/elsewhere.txt", b"not ours".to_vec()).await;
    let rc = tempfile::tempdir().unwrap();
    let text = r
        .config(
            rc.path(),
            "[mount]\nread_only = true\n[read]\nfrom = \"eu\"\n",
        )
        .replacen("[source]\n", "[source]\nprefix = \"team-b\"\n", 1);
    let replica = Mount::start(&text);
    let listed = names(&replica.dir);
    for n in ["e", "f2.txt", "g", "seed.txt"] {
        assert!(
            listed.iter().any(|l| l == n),
            "{n} in the replica: {listed:?}"
        );
    }
    assert!(
        !listed
            .iter()
            .any(|l| l.starts_with("team") || l == "elsewhere.txt"),
        "{listed:?}"
    );
    assert_eq!(std::fs::read(replica.path("e/y")).unwrap(), b"y\n");
    assert_eq!(std::fs::read(replica.path("seed.txt")).unwrap(), b"seed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_mount_keeps_to_its_prefix_on_seaweedfs() {
    a_prefix_mount_keeps_to_its_prefix(Regions::start().await, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_mount_keeps_to_its_prefix_on_moto() {
    a_prefix_mount_keeps_to_its_prefix(Regions::start_moto_source().await, true).await;
}

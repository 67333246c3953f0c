//! The S3 layer against two real S3 implementations: each body runs against
//! SeaweedFS (`weed mini`) and against moto's server, so the store depends on no
//! single vendor's quirks.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use bytes::Bytes;
use common::{bucket_name, Region};
use regionfs::config::{plan_part_size, BucketConfig, MIB};
use regionfs::error::StoreError;
use regionfs::store::{GetRequest, ObjectStore, PutBody, PutOptions, S3Store, Versioning};

async fn put_bytes(s: &S3Store, key: &str, data: &[u8]) -> String {
    s.put(
        key,
        PutBody::Bytes(Bytes::copy_from_slice(data)),
        &PutOptions::default(),
    )
    .await
    .unwrap()
    .version_id
    .expect("a versioned bucket returns a version id")
}

async fn read(s: &S3Store, key: &str, version: Option<&str>) -> Bytes {
    s.get(
        key,
        GetRequest {
            version_id: version.map(str::to_string),
            range: None,
        },
    )
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap()
}

async fn every_version_is_readable_by_id_and_delete_writes_a_marker(r: Region) {
    let s = r.versioned_bucket(&bucket_name("versions")).await;
    let v1 = put_bytes(&s, "dir/a.txt", b"one").await;
    let v2 = put_bytes(&s, "dir/a.txt", b"two").await;
    let v3 = put_bytes(&s, "dir/a.txt", b"three").await;
    assert!(v1 != v2 && v2 != v3);
    assert_eq!(read(&s, "dir/a.txt", Some(&v1)).await, "one");
    assert_eq!(read(&s, "dir/a.txt", Some(&v2)).await, "two");
    assert_eq!(read(&s, "dir/a.txt", None).await, "three");

    let del = s.delete("dir/a.txt").await.unwrap();
    assert!(
        del.delete_marker,
        "a delete on a versioned bucket writes a marker"
    );
    let marker = del.version_id.expect("the marker has a version id");
    let err = s.head("dir/a.txt", None).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(
        read(&s, "dir/a.txt", Some(&v2)).await,
        "two",
        "old versions survive a delete"
    );

    let page = s.list_versions("dir/", None, None).await.unwrap();
    let ids: Vec<(&str, bool, bool)> = page
        .versions
        .iter()
        .map(|v| (v.version_id.as_str(), v.is_delete_marker, v.is_latest))
        .collect();
    assert_eq!(
        ids,
        vec![
            (marker.as_str(), true, true),
            (v3.as_str(), false, false),
            (v2.as_str(), false, false),
            (v1.as_str(), false, false)
        ],
        "versions newest first with the marker latest"
    );

    s.delete_version("dir/a.txt", &v1).await.unwrap();
    assert!(
        s.head("dir/a.txt", Some(&v1)).await.is_err(),
        "a deleted version is gone"
    );
}

async fn list_versions_pages_with_a_tiny_page_size(r: Region) {
    let s = r.versioned_bucket(&bucket_name("pages")).await;
    let mut expected = Vec::new();
    for k in 0..4 {
        for n in 0..2 {
            let key = format!("p/k{k}");
            let v = put_bytes(&s, &key, format!("{k}-{n}").as_bytes()).await;
            expected.push((key, v));
        }
    }
    s.delete("p/k1").await.unwrap();
    let mut seen = Vec::new();
    let mut from = None;
    let mut pages = 0;
    loop {
        let page = s.list_versions("p/", from, Some(2)).await.unwrap();
        assert!(page.versions.len() <= 2);
        pages += 1;
        seen.extend(
            page.versions
                .into_iter()
                .map(|v| (v.key, v.version_id, v.is_delete_marker)),
        );
        match page.next {
            Some(n) => from = Some(n),
            None => break,
        }
    }
    assert!(
        pages >= 5,
        "9 entries at 2 a page need 5 pages, got {pages}"
    );
    assert_eq!(seen.len(), 9, "{seen:?}");
    for (key, v) in &expected {
        assert!(
            seen.iter().any(|(k, id, _)| k == key && id == v),
            "missing {key} {v}"
        );
    }
    assert_eq!(seen.iter().filter(|s| s.2).count(), 1);
}

async fn list_pages_and_groups_by_delimiter(r: Region) {
    let s = r.versioned_bucket(&bucket_name("list")).await;
    for k in ["a/1", "a/2", "b/x/1", "c", "d", "e"] {
        put_bytes(&s, k, b"x").await;
    }
    let top = s.list("", Some("/"), None, None).await.unwrap();
    assert_eq!(
        top.common_prefixes,
        vec!["a/".to_string(), "b/".to_string()]
    );
    let keys: Vec<_> = top.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, vec!["c", "d", "e"]);

    let mut all = Vec::new();
    let mut token = None;
    loop {
        let p = s.list("", None, token, Some(2)).await.unwrap();
        all.extend(p.objects.into_iter().map(|o| o.key));
        match p.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(all, vec!["a/1", "a/2", "b/x/1", "c", "d", "e"]);
}

async fn multipart_upload_of_64_mib_round_trips(r: Region) {
    let s = r.versioned_bucket(&bucket_name("multipart")).await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let size = 64 * MIB;
    let chunk: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..64u8 {
        let mut c = chunk.clone();
        c[0] = i;
        file.write_all(&c).unwrap();
    }
    file.flush().unwrap();
    let part = plan_part_size(8 * MIB, size);
    let mut opts = PutOptions::default();
    opts.metadata.insert("mode".into(), "33188".into());
    let id = s.create_multipart("big.bin", &opts).await.unwrap();
    let mut parts = Vec::new();
    for (n, offset) in (0..size).step_by(part as usize).enumerate() {
        let body = PutBody::File {
            path: file.path().to_path_buf(),
            offset,
            len: part.min(size - offset),
        };
        parts.push(
            s.upload_part("big.bin", &id, n as i32 + 1, body)
                .await
                .unwrap(),
        );
    }
    let done = s.complete_multipart("big.bin", &id, parts).await.unwrap();
    let version = done.version_id.expect("version id");
    let head = s.head("big.bin", Some(&version)).await.unwrap();
    assert_eq!(head.size, size);
    assert_eq!(head.metadata.get("mode").map(String::as_str), Some("33188"));
    let got = read(&s, "big.bin", Some(&version)).await;
    let want = std::fs::read(file.path()).unwrap();
    assert!(got == want, "multipart body differs from the file");
    let tail = s
        .get(
            "big.bin",
            GetRequest {
                version_id: None,
                range: Some((size - 10, size - 1)),
            },
        )
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&tail[..], &want[want.len() - 10..], "ranged GET");

    let id2 = s
        .create_multipart("aborted.bin", &PutOptions::default())
        .await
        .unwrap();
    s.upload_part(
        "aborted.bin",
        &id2,
        1,
        PutBody::Bytes(Bytes::from(vec![1u8; 1024])),
    )
    .await
    .unwrap();
    s.abort_multipart("aborted.bin", &id2).await.unwrap();
    assert!(s
        .head("aborted.bin", None)
        .await
        .unwrap_err()
        .is_not_found());
}

async fn user_metadata_content_type_and_tags_round_trip(r: Region) {
    let s = r.versioned_bucket(&bucket_name("meta")).await;
    let mut opts = PutOptions {
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    opts.metadata.insert("mode".into(), "33188".into());
    opts.metadata.insert("uid".into(), "1000".into());
    opts.tags.insert("class".into(), "critical".into());
    opts.tags.insert("team".into(), "a b".into());
    let v = s
        .put("m.txt", PutBody::Bytes(Bytes::from_static(b"hello")), &opts)
        .await
        .unwrap();
    let head = s.head("m.txt", None).await.unwrap();
    assert_eq!(head.content_type.as_deref(), Some("text/plain"));
    assert_eq!(head.metadata, opts.metadata);
    assert_eq!(head.version_id, v.version_id);
    assert_eq!(s.get_tags("m.txt", None).await.unwrap(), opts.tags);

    let mut newer = BTreeMap::new();
    newer.insert("class".to_string(), "archive".to_string());
    s.put_tags("m.txt", v.version_id.as_deref(), &newer)
        .await
        .unwrap();
    assert_eq!(
        s.get_tags("m.txt", v.version_id.as_deref()).await.unwrap(),
        newer
    );
}

async fn copy_writes_a_new_version_with_replaced_metadata(r: Region) {
    let s = r.versioned_bucket(&bucket_name("copy")).await;
    let mut opts = PutOptions::default();
    opts.metadata.insert("mode".into(), "33188".into());
    let v1 = s
        .put(
            "dir/file name+1.txt",
            PutBody::Bytes(Bytes::from_static(b"body")),
            &opts,
        )
        .await
        .unwrap();
    put_bytes(&s, "dir/file name+1.txt", b"newer").await;

    let mut replaced = PutOptions {
        content_type: Some("application/x-test".into()),
        ..Default::default()
    };
    replaced.metadata.insert("mode".into(), "33261".into());
    replaced.tags.insert("k".into(), "v".into());
    let c = s
        .copy(
            "dir/file name+1.txt",
            v1.version_id.as_deref(),
            "copied.txt",
            &replaced,
        )
        .await
        .unwrap();
    assert!(c.version_id.is_some());
    assert_eq!(
        read(&s, "copied.txt", None).await,
        "body",
        "copied from the named version"
    );
    let head = s.head("copied.txt", None).await.unwrap();
    assert_eq!(head.metadata.get("mode").map(String::as_str), Some("33261"));
    assert_eq!(head.content_type.as_deref(), Some("application/x-test"));
    assert_eq!(s.get_tags("copied.txt", None).await.unwrap(), replaced.tags);
}

async fn missing_bucket_and_key_give_typed_errors(r: Region) {
    let s = r.versioned_bucket(&bucket_name("errors")).await;
    let e = s.head("nope", None).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e:?}");
    let e = s.get("nope", GetRequest::default()).await.err().unwrap();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e:?}");
    assert!(e.is_permanent());

    let missing = S3Store::connect(&r.bucket_config("x", &bucket_name("missing"))).await;
    let e = missing.versioning().await.unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e:?}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = missing
        .put("k", PutBody::Bytes(Bytes::new()), &PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e:?}");
}

async fn versioning_state_is_reported(r: Region) {
    let name = bucket_name("vers");
    let s = r.versioned_bucket(&name).await;
    assert_eq!(s.versioning().await.unwrap(), Versioning::Enabled);
    s.set_versioning(false).await.unwrap();
    assert_eq!(s.versioning().await.unwrap(), Versioning::Suspended);
}

async fn unreachable_endpoint_is_transient(r: Region) {
    let mut cfg: BucketConfig = r.bucket_config("x", "any");
    drop(r);
    cfg.endpoint = Some(format!("http://127.0.0.1:{}", 1));
    let s = S3Store::connect(&cfg).await;
    let e = s.head("k", None).await.unwrap_err();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e:?}");
    assert!(!e.is_permanent());
}

/// Object ACLs as both stores keep them: explicit grants and canned ACLs set
/// by PutObjectAcl are read back per version. (A canned `x-amz-acl` on the PUT
/// itself is ignored by SeaweedFS, which is why regionfs also sets it by
/// PutObjectAcl.)
async fn object_acls_round_trip_per_version(r: Region) {
    use regionfs::store::{AclBody, AclSupport, Grantee};
    let s = r.versioned_bucket(&bucket_name("acl")).await;
    // SeaweedFS buckets start BucketOwnerEnforced; moto's have no controls.
    s.set_object_ownership("ObjectWriter").await.unwrap();
    assert_eq!(s.acl_support().await.unwrap(), AclSupport::Enabled);
    let v1 = put_bytes(&s, "a", b"1").await;
    let v2 = put_bytes(&s, "a", b"2").await;
    let fresh = s.get_acl("a", Some(&v2)).await.unwrap();
    assert!(fresh.is_private(), "{fresh:?}");
    let all_users = Grantee::Group("http://acs.amazonaws.com/groups/global/AllUsers".into());
    let mut public = fresh.clone();
    public.grants.push((all_users.clone(), "READ".into()));
    s.put_acl("a", Some(&v2), &AclBody::Grants(public.clone()))
        .await
        .unwrap();
    assert_eq!(
        s.get_acl("a", Some(&v2)).await.unwrap().normalized(),
        public.normalized()
    );
    assert!(s.get_acl("a", Some(&v1)).await.unwrap().is_private());
    s.put_acl("a", None, &AclBody::Canned("authenticated-read".into()))
        .await
        .unwrap();
    let canned = s.get_acl("a", None).await.unwrap();
    assert!(
        canned.grants.iter().any(
            |(g, p)| matches!(g, Grantee::Group(u) if u.ends_with("AuthenticatedUsers"))
                && p == "READ"
        ),
        "{canned:?}"
    );
    s.set_object_ownership("BucketOwnerEnforced").await.unwrap();
    assert!(matches!(
        s.acl_support().await.unwrap(),
        AclSupport::Disabled(_)
    ));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod seaweedfs {
            $( #[tokio::test] async fn $name() { super::$name(super::Region::seaweed("us-east-1")).await } )*
        }
        mod moto {
            $( #[tokio::test] async fn $name() { super::$name(super::Region::moto("us-east-1")).await } )*
        }
    };
}

conformance!(
    object_acls_round_trip_per_version,
    every_version_is_readable_by_id_and_delete_writes_a_marker,
    list_versions_pages_with_a_tiny_page_size,
    list_pages_and_groups_by_delimiter,
    multipart_upload_of_64_mib_round_trips,
    user_metadata_content_type_and_tags_round_trip,
    copy_writes_a_new_version_with_replaced_metadata,
    missing_bucket_and_key_give_typed_errors,
    versioning_state_is_reported,
    unreachable_endpoint_is_transient,
);

/// moto accepts any credentials unless its IAM emulation is switched on, so bad
/// credentials are checked against SeaweedFS, which has identities configured.
#[tokio::test]
async fn bad_credentials_are_access_denied_on_seaweedfs() {
    let r = Region::seaweed("us-east-1");
    let name = bucket_name("creds");
    let _ = r.versioned_bucket(&name).await;
    let mut cfg = r.bucket_config("x", &name);
    cfg.secret_access_key = Some("wrong".into());
    let s = S3Store::connect(&cfg).await;
    let e = s.versioning().await.unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied { .. }), "{e:?}");
    assert!(e.is_permanent());
    assert!(e.to_string().contains("credentials"), "{e}");
}

/// The head of the first request a store sends for `send`, read by a server
/// on loopback that refuses it (403: the SDK does not retry) and then reads
/// the rest of the request, so the client gets the answer rather than a reset.
async fn first_request_head<F, Fut>(checksums: regionfs::config::ChecksumMode, send: F) -> String
where
    F: FnOnce(S3Store) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended inside its head");
            head.extend_from_slice(&buf[..n]);
        }
        let body = "<Error><Code>AccessDenied</Code><Message>no</Message></Error>";
        let answer = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(answer.as_bytes()).await.unwrap();
        // Read what is left of the body before closing: closing on unread
        // bytes resets the connection, and the SDK may then see an I/O error
        // before the answer and retry against a listener that is gone. The
        // client closes once it has the answer (`Connection: close`).
        let _ = sock.shutdown().await;
        let drain = async { while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), drain).await;
        let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        String::from_utf8_lossy(&head[..end]).to_ascii_lowercase()
    });
    let cfg = BucketConfig {
        name: "wire".into(),
        region: "us-east-1".into(),
        bucket: "wire".into(),
        prefix: String::new(),
        endpoint: Some(endpoint),
        profile: None,
        path_style: Some(true),
        access_key_id: Some("regionfs".into()),
        secret_access_key: Some("regionfs-secret".into()),
        checksums,
        allow_same_region: false,
        acl: None,
        sse: None,
        kms_key_id: None,
    };
    let e = send(S3Store::connect(&cfg).await).await.unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied { .. }), "{e:?}");
    server.await.unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[tokio::test]
async fn bodies_go_unsigned_with_their_crc_and_the_request_signed() {
    use regionfs::config::ChecksumMode;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&vec![7u8; MIB as usize]).unwrap();
    let path = file.path().to_path_buf();
    let streamed = first_request_head(ChecksumMode::WhenSupported, |s| async move {
        let body = PutBody::File {
            path,
            offset: 0,
            len: MIB,
        };
        s.upload_part("k", "id", 1, body).await.map(|_| ())
    })
    .await;
    assert_eq!(
        header(&streamed, "x-amz-content-sha256"),
        Some("streaming-unsigned-payload-trailer"),
        "{streamed}"
    );
    assert_eq!(
        header(&streamed, "x-amz-trailer"),
        Some("x-amz-checksum-crc32")
    );
    // 16 unsigned 64 KiB chunks, the last chunk, the CRC32 trailer, the end.
    let encoded = 16 * (7 + 65536 + 2) + 3 + (21 + 8 + 2) + 2;
    assert_eq!(
        header(&streamed, "content-length"),
        Some(encoded.to_string().as_str())
    );
    assert!(header(&streamed, "authorization").is_some_and(|a| a.starts_with("aws4-hmac-sha256")));

    let in_memory = first_request_head(ChecksumMode::WhenSupported, |s| async move {
        let body = PutBody::Bytes(Bytes::from_static(b"small"));
        s.put("k", body, &PutOptions::default()).await.map(|_| ())
    })
    .await;
    assert_eq!(
        header(&in_memory, "x-amz-content-sha256"),
        Some("unsigned-payload")
    );
    // A whole object's PUT carries the version's CRC-64/NVME.
    assert!(
        header(&in_memory, "x-amz-checksum-crc64nvme").is_some(),
        "{in_memory}"
    );

    // Without checksums the body is what the signature covers.
    let signed = first_request_head(ChecksumMode::WhenRequired, |s| async move {
        let body = PutBody::Bytes(Bytes::from_static(b"small"));
        s.put("k", body, &PutOptions::default()).await.map(|_| ())
    })
    .await;
    let sha = header(&signed, "x-amz-content-sha256").unwrap();
    assert_eq!(sha.len(), 64, "{signed}");
    assert!(header(&signed, "x-amz-checksum-crc32").is_none());
    assert!(header(&signed, "x-amz-checksum-crc64nvme").is_none());
    // ... but a CRC regionfs knows (a replica's) still goes, as a header.
    let known = regionfs::store::checksum::Crc64::of(b"small").to_base64();
    let sent = known.clone();
    let replica = first_request_head(ChecksumMode::WhenRequired, |s| async move {
        let body = PutBody::Bytes(Bytes::from_static(b"small"));
        let opts = PutOptions {
            checksum: Some(sent),
            ..Default::default()
        };
        s.put("k", body, &opts).await.map(|_| ())
    })
    .await;
    assert_eq!(
        header(&replica, "x-amz-checksum-crc64nvme"),
        // The head is kept lower-cased.
        Some(known.to_ascii_lowercase().as_str()),
        "{replica}"
    );
}

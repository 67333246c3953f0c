//! A store that misbehaves: an HTTP server on loopback answering every
//! request with malformed XML, a body cut short of its Content-Length, or
//! bytes that do not match the checksum it sends. Each is a clear error the
//! callers retry (never a panic, never bytes handed on as the object's).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use regionfs::config::{BucketConfig, ChecksumMode, Sse};
use regionfs::error::StoreError;
use regionfs::store::{GetRequest, ObjectStore, PutBody, PutOptions, S3Store};

#[derive(Clone, Copy)]
enum Misbehaviour {
    /// 200 with a listing cut in the middle of an element.
    MalformedXml,
    /// Content-Length 1000, 400 bytes, then the connection closes.
    CutBody,
    /// The body with `x-amz-checksum-crc32` of other bytes.
    WrongChecksum,
    /// 400 `KMS.NotFoundException`, as S3 answers a write under a KMS key
    /// that does not exist.
    RefuseKmsKey,
}

const BODY: &[u8] = b"the bytes a reader must never get from this store";

/// Serves `how` to every request; counts the requests.
fn hostile_server(how: Misbehaviour) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    // One request: its head, then its body (if it says one).
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            first = false;
                            continue;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let keep_open = match how {
                        Misbehaviour::MalformedXml => {
                            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListVersionsResult><Name>b</Name><Version><Key>a</Ke";
                            let _ = write!(
                                stream,
                                "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{xml}",
                                xml.len()
                            );
                            true
                        }
                        Misbehaviour::CutBody => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\netag: \"x\"\r\n\r\n"
                            );
                            let _ = stream.write_all(&[7u8; 400]);
                            false
                        }
                        Misbehaviour::RefuseKmsKey => {
                            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>KMS.NotFoundException</Code><Message>Invalid keyId</Message></Error>";
                            let _ = write!(
                                stream,
                                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{xml}",
                                xml.len()
                            );
                            true
                        }
                        Misbehaviour::WrongChecksum => {
                            let crc = crc32(b"some other bytes").to_be_bytes();
                            let _ = write!(
                                stream,
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\netag: \"x\"\r\nx-amz-checksum-crc32: {}\r\n\r\n",
                                BODY.len(),
                                base64::engine::general_purpose::STANDARD.encode(crc)
                            );
                            let _ = stream.write_all(BODY);
                            true
                        }
                    };
                    if !keep_open {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            });
        }
    });
    (endpoint, asked)
}

/// CRC-32 (IEEE), as S3's `x-amz-checksum-crc32`.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn store_at(endpoint: &str) -> S3Store {
    store_with(endpoint, None, None).await
}

async fn store_with(endpoint: &str, sse: Option<Sse>, kms_key_id: Option<&str>) -> S3Store {
    common::quiet_aws_env();
    S3Store::connect(&BucketConfig {
        name: "hostile".into(),
        region: "us-east-1".into(),
        bucket: "b".into(),
        prefix: String::new(),
        endpoint: Some(endpoint.into()),
        profile: None,
        path_style: Some(true),
        access_key_id: Some(common::ACCESS_KEY.into()),
        secret_access_key: Some(common::SECRET_KEY.into()),
        checksums: ChecksumMode::WhenSupported,
        allow_same_region: false,
        acl: None,
        sse,
        kms_key_id: kms_key_id.map(str::to_string),
    })
    .await
}

/// The error is one the uploader, replicator and readers retry, names the
/// store, and says what was wrong.
fn assert_retried_and_clear(e: &StoreError, says: &str) {
    assert!(!e.is_permanent(), "retried, not failed for good: {e}");
    let text = e.to_string();
    assert!(text.contains(says), "says `{says}`: {text}");
}

#[tokio::test]
async fn a_listing_of_malformed_xml_is_a_clear_error_that_is_retried() {
    let (endpoint, asked) = hostile_server(Misbehaviour::MalformedXml);
    let store = store_at(&endpoint).await;
    let e = store.list_versions("", None, None).await.unwrap_err();
    assert!(matches!(e, StoreError::Malformed { .. }), "{e:?}");
    assert_retried_and_clear(&e, "not a valid S3 response");
    assert!(
        e.to_string().contains("hostile") || e.to_string().contains("`b`"),
        "{e}"
    );
    assert!(asked.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_body_cut_short_of_its_length_is_an_error_not_a_short_object() {
    let (endpoint, _) = hostile_server(Misbehaviour::CutBody);
    let store = store_at(&endpoint).await;
    let got = match store.get("k", GetRequest::default()).await {
        Ok(obj) => obj.bytes().await,
        Err(e) => Err(e),
    };
    let e = got.expect_err("400 of 1000 bytes are not the object");
    assert_retried_and_clear(&e, "`k`");
}

#[tokio::test]
async fn bytes_that_do_not_match_their_checksum_are_never_handed_on() {
    let (endpoint, _) = hostile_server(Misbehaviour::WrongChecksum);
    let store = store_at(&endpoint).await;
    let got = match store.get("k", GetRequest::default()).await {
        Ok(obj) => obj.bytes().await,
        Err(e) => Err(e),
    };
    let e = got.expect_err("a body that does not match its checksum");
    assert_retried_and_clear(&e, "checksum");
}

#[tokio::test]
async fn a_kms_key_the_store_refuses_is_a_permanent_error_naming_bucket_and_key() {
    let (endpoint, _) = hostile_server(Misbehaviour::RefuseKmsKey);
    let store = store_with(&endpoint, Some(Sse::Kms), Some("alias/gone")).await;
    let e = store
        .put("k", PutBody::Bytes("x".into()), &PutOptions::default())
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "not retried blindly: {e}");
    let text = e.to_string();
    assert!(text.contains("`b`"), "names the bucket: {text}");
    assert!(text.contains("KMS.NotFoundException"), "{text}");
    assert!(
        text.contains("kms_key_id is `alias/gone`"),
        "names the key: {text}"
    );
}

//! Credentials as operators provide them, through aws-config's chain: a named
//! profile in a shared credentials file, a role assumed through STS (moto
//! checking every signature and IAM policy), a container credentials endpoint,
//! `credential_process`; and an SSO profile, which a daemon cannot renew,
//! refused with a clear error. Each is checked on a real store that rejects
//! requests signed with anything else.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{bucket_name, Region, ACCESS_KEY, SECRET_KEY};

/// Variables through which the chain could find credentials other than the
/// ones a test gives: removed from every command here.
const AMBIENT: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ENDPOINT_URL_STS",
];

/// A bucket's section without keys: where its credentials come from is the
/// `extra` lines (e.g. `profile = "backup"`) and the environment.
fn bucket_section(kind: &str, name: &str, region: &Region, bucket: &str, extra: &str) -> String {
    format!(
        "{kind}\nname = \"{name}\"\nregion = \"{}\"\nbucket = \"{bucket}\"\nendpoint = \"{}\"\n{extra}\n",
        region.region, region.endpoint
    )
}

fn config(source: &str, destination: &str, cache: &Path) -> String {
    format!(
        "{source}\n{destination}\n[[rule]]\nid = \"all\"\ndestination = \"eu\"\n\n[cache]\ndir = \"{}\"\n",
        cache.display()
    )
}

/// `regionfs check-config --probe` with only `envs` as the chain's input.
fn probe(text: &str, envs: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regionfs.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(common::regionfs_bin());
    cmd.args(["check-config", "--probe"]).arg(&path);
    for v in AMBIENT {
        cmd.env_remove(v);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("no-credentials"),
        )
        .envs(envs.iter().copied());
    cmd.output().unwrap()
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn two_seaweed_regions() -> (Region, String, Region, String) {
    let (a, b) = (Region::seaweed("us-east-1"), Region::seaweed("eu-west-1"));
    let (sa, sb) = (bucket_name("src"), bucket_name("dst"));
    a.versioned_bucket(&sa).await;
    b.versioned_bucket(&sb).await;
    (a, sa, b, sb)
}

#[tokio::test]
async fn a_named_profile_in_a_shared_credentials_file_signs_every_request() {
    let (a, sa, b, sb) = two_seaweed_regions().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    // The default profile's keys are wrong: only the named one works.
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n\
             [backup]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let with_profile = |p: &str| {
        config(
            &bucket_section(
                "[source]",
                "us-east",
                &a,
                &sa,
                &format!("profile = \"{p}\""),
            ),
            &bucket_section(
                "[[destination]]",
                "eu",
                &b,
                &sb,
                &format!("profile = \"{p}\""),
            ),
            &cache,
        )
    };
    let envs = [("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap())];

    let good = with_profile("backup");
    let o = probe(&good, &envs);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert!(said(&o).contains("ok    us-east:"), "{}", said(&o));
    assert!(said(&o).contains("ok    eu:"), "{}", said(&o));

    let creds_path = creds.to_str().unwrap().to_string();
    let default = with_profile("default");
    let o = probe(&default, &[("AWS_SHARED_CREDENTIALS_FILE", &creds_path)]);
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(
        said(&o).contains("FAIL  us-east: credentials not accepted"),
        "{}",
        said(&o)
    );

    let creds_path = creds.to_str().unwrap().to_string();
    let missing = with_profile("no-such-profile");
    let o = probe(&missing, &[("AWS_SHARED_CREDENTIALS_FILE", &creds_path)]);
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(said(&o).contains("no-such-profile"), "{}", said(&o));
}

/// The IAM set up by `tests/moto_iam.py setup`.
struct MotoIam {
    access_key: String,
    secret_key: String,
    role_arn: String,
}

/// moto answering the five IAM calls of `moto_iam.py setup` unchecked, then
/// checking every request: the user may only assume the role, the role may use
/// S3. `buckets` are created and versioned through the role.
fn moto_with_a_role(buckets: &[&str]) -> (Region, MotoIam) {
    let a = Region::moto_enforcing_auth("us-east-1", 5);
    let mut args = vec!["setup", a.endpoint.as_str()];
    args.extend_from_slice(buckets);
    let iam: serde_json::Value = serde_json::from_str(&common::moto_iam(&args)).unwrap();
    let iam = MotoIam {
        access_key: iam["access_key"].as_str().unwrap().into(),
        secret_key: iam["secret_key"].as_str().unwrap().into(),
        role_arn: iam["role_arn"].as_str().unwrap().into(),
    };
    (a, iam)
}

#[tokio::test]
async fn a_role_assumed_through_sts_is_what_reaches_the_bucket() {
    // Only the probe runs here, not a mount: moto 5.1's signature check
    // rejects any listing with `/` in its query, whoever signs it (boto3 too).
    let b = Region::seaweed("eu-west-1");
    let (sa, sb) = (bucket_name("src"), bucket_name("dst"));
    b.versioned_bucket(&sb).await;
    let (a, iam) = moto_with_a_role(&[&sa]);
    let dir = tempfile::tempdir().unwrap();
    let (conf, creds) = (dir.path().join("config"), dir.path().join("credentials"));
    std::fs::write(
        &conf,
        format!(
            "[profile writer]\nrole_arn = {}\nsource_profile = host\nregion = us-east-1\n\n\
             [profile host]\nregion = us-east-1\n",
            iam.role_arn
        ),
    )
    .unwrap();
    std::fs::write(
        &creds,
        format!(
            "[host]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            iam.access_key, iam.secret_key
        ),
    )
    .unwrap();
    let text_for = |profile: &str| {
        config(
            &bucket_section(
                "[source]",
                "us-east",
                &a,
                &sa,
                &format!("profile = \"{profile}\""),
            ),
            &bucket_section(
                "[[destination]]",
                "eu",
                &b,
                &sb,
                &format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\""),
            ),
            &dir.path().join("cache"),
        )
    };
    let envs = [
        ("AWS_CONFIG_FILE", conf.to_str().unwrap().to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            creds.to_str().unwrap().to_string(),
        ),
        ("AWS_ENDPOINT_URL_STS", a.endpoint.clone()),
    ];
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // The host's own keys may not touch the bucket: the probe says so.
    let o = probe(&text_for("host"), &env_refs);
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(
        said(&o).contains("FAIL  us-east: credentials not accepted"),
        "{}",
        said(&o)
    );
    let o = probe(&text_for("writer"), &env_refs);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
}

/// A container credentials endpoint (ECS, EKS Pod Identity): answers `body`
/// (a role's temporary credentials) when asked with the right token, and
/// counts the questions.
fn container_endpoint(token: &'static str, body: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v2/credentials", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut authorized = false;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                let l = line.to_ascii_lowercase();
                if l.starts_with("authorization:") && line.trim_end().ends_with(token) {
                    authorized = true;
                }
                line.clear();
            }
            let (status, body) = if authorized {
                counter.fetch_add(1, Ordering::SeqCst);
                ("200 OK", body.as_str())
            } else {
                ("401 Unauthorized", "{}")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, asked)
}

#[tokio::test]
async fn container_credentials_from_a_local_endpoint_sign_requests() {
    let (sa, sb) = (bucket_name("src"), bucket_name("dst"));
    let (a, iam) = moto_with_a_role(&[&sa, &sb]);
    let role_session = common::moto_iam(&[
        "assume",
        &a.endpoint,
        &iam.access_key,
        &iam.secret_key,
        &iam.role_arn,
    ]);
    let (url, asked) = container_endpoint("pod-token", role_session);
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &bucket_section("[source]", "us-east", &a, &sa, ""),
        &bucket_section("[[destination]]", "eu", &a, &sb, "allow_same_region = true"),
        &dir.path().join("cache"),
    );
    let o = probe(
        &text,
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-token"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    assert!(asked.load(Ordering::SeqCst) >= 1, "the endpoint was asked");

    // Without the endpoint nothing signs: the same probe is refused.
    let o = probe(&text, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
}

#[tokio::test]
async fn credential_process_supplies_the_keys() {
    let (a, sa, b, sb) = two_seaweed_regions().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("vault-creds");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho '{{\"Version\": 1, \"AccessKeyId\": \"{ACCESS_KEY}\", \"SecretAccessKey\": \"{SECRET_KEY}\"}}'\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let conf = dir.path().join("config");
    std::fs::write(
        &conf,
        format!(
            "[profile vault]\ncredential_process = {}\n",
            script.display()
        ),
    )
    .unwrap();
    let text = config(
        &bucket_section("[source]", "us-east", &a, &sa, "profile = \"vault\""),
        &bucket_section("[[destination]]", "eu", &b, &sb, "profile = \"vault\""),
        &dir.path().join("cache"),
    );
    let conf = conf.to_str().unwrap().to_string();
    let o = probe(&text, &[("AWS_CONFIG_FILE", &conf)]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
}

#[tokio::test]
async fn an_sso_profile_is_refused_saying_what_to_use_instead() {
    let (a, sa, b, sb) = two_seaweed_regions().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("config");
    std::fs::write(
        &conf,
        "[profile corp]\nsso_start_url = https://example.invalid/start\nsso_region = us-east-1\n\
         sso_account_id = 123456789012\nsso_role_name = Backup\nregion = us-east-1\n",
    )
    .unwrap();
    let text = config(
        &bucket_section("[source]", "us-east", &a, &sa, "profile = \"corp\""),
        &bucket_section("[[destination]]", "eu", &b, &sb, "profile = \"corp\""),
        &dir.path().join("cache"),
    );
    let conf = conf.to_str().unwrap().to_string();
    let o = probe(&text, &[("AWS_CONFIG_FILE", &conf)]);
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(said(&o).contains("SSO"), "{}", said(&o));
    assert!(said(&o).contains("corp"), "{}", said(&o));
}

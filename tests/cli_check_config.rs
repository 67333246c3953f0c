//! `regionfs check-config`: the real binary, its exit codes and its messages.

mod common;

use std::process::{Command, Output};

use common::{bucket_name, Region, ACCESS_KEY, SECRET_KEY};

fn check_config(text: &str, probe: bool) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regionfs.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regionfs"));
    cmd.arg("check-config")
        .arg(&path)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    if probe {
        cmd.arg("--probe");
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn example() -> String {
    std::fs::read_to_string(common::repo_root().join("config.example.toml")).unwrap()
}

#[test]
fn the_example_config_is_valid_and_printed_with_derived_limits() {
    let o = check_config(&example(), false);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("max_size = \"10GiB\""), "{out}");
    assert!(out.contains("upload.part_size(1GiB file) = 8MiB"), "{out}");
    assert!(out.contains("upload.max_object_size = 5TiB"), "{out}");
}

#[test]
fn each_bad_config_exits_2_naming_its_cause() {
    let ex = example();
    let cases = [
        (
            ex.replace(
                "destination = \"eu\"                     #",
                "destination = \"ap\" #",
            ),
            "rule[0].destination",
        ),
        (
            ex.replace("[cache]\n", "[cache]\ncolour = \"blue\"\n"),
            "colour",
        ),
        (
            ex.replace("max_size = \"10GiB\"", "max_size = \"ten\""),
            "cache.max_size",
        ),
        (
            ex.replace("region = \"eu-west-1\"", "region = \"us-east-1\"")
                .replace("18340", "18330"),
            "destination[0].region",
        ),
        (
            format!("{ex}\n[[rule]]\nid = \"everything\"\npriority = 1\ndestination = \"eu\"\n"),
            "rule[1].id",
        ),
    ];
    for (text, cause) in cases {
        let o = check_config(&text, false);
        assert_eq!(o.status.code(), Some(2), "expected exit 2 for {cause}");
        assert!(
            stderr(&o).contains(cause),
            "message for {cause}: {}",
            stderr(&o)
        );
    }
}

fn config_for(source: &Region, src_bucket: &str, dest: &Region, dst_bucket: &str) -> String {
    format!(
        r#"
[source]
name = "us-east"
region = "us-east-1"
bucket = "{src_bucket}"
endpoint = "{}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "{dst_bucket}"
endpoint = "{}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"

[[rule]]
id = "all"
destination = "eu"
"#,
        source.endpoint, dest.endpoint
    )
}

#[tokio::test]
async fn probe_reports_both_regions_reachable_and_versioned() {
    let (a, b) = (Region::seaweed("us-east-1"), Region::seaweed("eu-west-1"));
    let (sa, sb) = (bucket_name("src"), bucket_name("dst"));
    a.versioned_bucket(&sa).await;
    b.versioned_bucket(&sb).await;
    let text = config_for(&a, &sa, &b, &sb);
    let o = tokio::task::spawn_blocking(move || check_config(&text, true))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("ok    us-east:"), "{out}");
    assert!(out.contains("ok    eu:"), "{out}");
    assert!(
        !out.contains(SECRET_KEY),
        "the secret is never printed: {out}"
    );
}

#[tokio::test]
async fn probe_says_versioning_is_off_and_how_to_enable_it() {
    let (a, b) = (Region::seaweed("us-east-1"), Region::seaweed("eu-west-1"));
    let (sa, sb) = (bucket_name("src"), bucket_name("dst"));
    a.versioned_bucket(&sa).await;
    b.versioned_bucket(&sb)
        .await
        .set_versioning(false)
        .await
        .unwrap();
    let text = config_for(&a, &sa, &b, &sb);
    let o = tokio::task::spawn_blocking(move || check_config(&text, true))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("FAIL  eu:"), "{out}");
    assert!(out.contains("versioning Suspended"), "{out}");
    assert!(
        out.contains(&format!("put-bucket-versioning --bucket {sb}")),
        "{out}"
    );
}

#[tokio::test]
async fn probe_reports_a_missing_bucket_and_rejected_credentials() {
    let (a, b) = (Region::seaweed("us-east-1"), Region::seaweed("eu-west-1"));
    let sa = bucket_name("src");
    a.versioned_bucket(&sa).await;
    let text = config_for(&a, &sa, &b, "does-not-exist").replacen(
        &format!("secret_access_key = \"{SECRET_KEY}\""),
        "secret_access_key = \"wrong\"",
        1,
    );
    let o = tokio::task::spawn_blocking(move || check_config(&text, true))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("FAIL  us-east: credentials not accepted"),
        "{out}"
    );
    assert!(out.contains("FAIL  eu: bucket `does-not-exist`"), "{out}");
    assert!(!out.contains("wrong"), "{out}");
}

#[test]
fn a_source_prefix_without_its_slash_is_shown_as_the_directory_it_means() {
    let with_prefix = |p: &str| {
        example().replacen(
            "prefix = \"\"                            # default \"\": mount",
            &format!("prefix = \"{p}\" # mount"),
            1,
        )
    };
    assert!(
        with_prefix("x").contains("prefix = \"x\""),
        "the example has a source prefix line"
    );
    let o = check_config(&with_prefix("team-b"), false);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("prefix = \"team-b/\""), "{out}");

    let o = check_config(&with_prefix("team-b//x"), false);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("source.prefix"), "{}", stderr(&o));
}

use super::*;

const MINIMAL: &str = r#"
[source]
name = "us-east"
region = "us-east-1"
bucket = "src"
endpoint = "http://127.0.0.1:8333"

[[destination]]
name = "eu"
region = "eu-west-1"
bucket = "dst"
endpoint = "http://127.0.0.1:8334"

[[rule]]
id = "all"
destination = "eu"
"#;

fn err(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.cache.max_size, ByteSize(10 * GIB));
    assert_eq!(c.durability.fsync, FsyncDurability::Source);
    assert_eq!(c.replication.time_target.0, Duration::from_secs(900));
    assert!(c.source.path_style());
    assert_eq!(c.read.prefer, "nearest");
    assert!(!c.read.stream_unverified, "reads wait for the checksum");
    let streaming =
        Config::parse(&format!("{MINIMAL}\n[read]\nstream_unverified = true\n")).unwrap();
    assert!(streaming.read.stream_unverified);
}

#[test]
fn sizes_and_durations_parse() {
    assert_eq!("10GiB".parse::<ByteSize>().unwrap().0, 10 * GIB);
    assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 * MIB);
    assert_eq!("100MB".parse::<ByteSize>().unwrap().0, 100_000_000);
    assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
    assert!("ten".parse::<ByteSize>().is_err());
    assert!("10XB".parse::<ByteSize>().is_err());
    assert_eq!(
        "5m".parse::<HumanDuration>().unwrap().0,
        Duration::from_secs(300)
    );
    assert_eq!(
        "1h30m".parse::<HumanDuration>().unwrap().0,
        Duration::from_secs(5400)
    );
    assert_eq!(
        "500ms".parse::<HumanDuration>().unwrap().0,
        Duration::from_millis(500)
    );
    assert_eq!("0s".parse::<HumanDuration>().unwrap().0, Duration::ZERO);
    assert_eq!(
        "2d 12h".parse::<HumanDuration>().unwrap().0,
        Duration::from_secs(216_000)
    );
    assert_eq!(
        "5 minutes".parse::<HumanDuration>().unwrap().0,
        Duration::from_secs(300)
    );
    assert_eq!(
        "1w".parse::<HumanDuration>().unwrap().0,
        Duration::from_secs(7 * 86_400)
    );
    assert!("5 parsecs".parse::<HumanDuration>().is_err());
    assert!("".parse::<HumanDuration>().is_err());
    assert!("-5s".parse::<HumanDuration>().is_err());
    assert_eq!("4k".parse::<ByteSize>().unwrap().0, 4000);
    assert_eq!(" 4 KiB ".parse::<ByteSize>().unwrap().0, 4096);
    assert_eq!("1.5GiB".parse::<ByteSize>().unwrap().0, 3 * GIB / 2);
    assert!("-1".parse::<ByteSize>().is_err());
    assert!("".parse::<ByteSize>().is_err());
    let e = "10 parsecs".parse::<ByteSize>().unwrap_err();
    assert!(e.contains("10GiB"), "says what to write: {e}");
}

#[test]
fn instants_parse_as_rfc3339_or_unix_seconds() {
    use std::time::{Duration, UNIX_EPOCH};
    let at = |s: &str| parse_instant(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
    assert_eq!(
        at("2026-11-24T10:00:00Z"),
        Ok(Duration::from_secs(1_795_514_400))
    );
    assert_eq!(
        at("2026-11-24 10:00:00Z"),
        Ok(Duration::from_secs(1_795_514_400))
    );
    assert_eq!(
        at("2026-11-24T11:30:00+01:30"),
        Ok(Duration::from_secs(1_795_514_400))
    );
    assert_eq!(
        at("2026-11-24T10:00:00.25Z"),
        Ok(Duration::from_millis(1_795_514_400_250))
    );
    assert_eq!(at("@1764000000"), Ok(Duration::from_secs(1_764_000_000)));
    for bad in [
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-11-24",
        "@soon",
        "1969-12-31T23:59:59Z",
    ] {
        let e = parse_instant(bad).unwrap_err();
        assert!(e.contains(bad) && e.contains("@1764000000"), "{e}");
    }
}

#[test]
fn unknown_key_is_rejected_with_field_and_line() {
    let e = err(&MINIMAL.replace("bucket = \"src\"", "bucket = \"src\"\nbukcet = 1"));
    assert!(e.contains("bukcet"), "{e}");
    assert!(e.contains("line 6"), "{e}");
}

#[test]
fn memory_limits_below_their_minimum_name_the_field() {
    let e = err(&format!("{MINIMAL}\n[mount]\nmax_inodes = 10\n"));
    assert!(e.contains("mount.max_inodes") && e.contains("256"), "{e}");
    let e = err(&format!("{MINIMAL}\n[cache]\nmax_clean_files = 0\n"));
    assert!(e.contains("cache.max_clean_files"), "{e}");
    let e = err(&format!("{MINIMAL}\n[upload]\nheld_in_memory = 1\n"));
    assert!(
        e.contains("upload.held_in_memory") && e.contains("at least 2"),
        "{e}"
    );
}

#[test]
fn bad_size_names_the_field() {
    let e = err(&format!("{MINIMAL}\n[cache]\nmax_size = \"ten\"\n"));
    assert!(e.contains("cache.max_size"), "{e}");
    assert!(e.contains("\"ten\""), "{e}");
}

#[test]
fn acl_settings_are_checked_by_name() {
    let ok = MINIMAL
        .replace(
            "bucket = \"src\"",
            "bucket = \"src\"\nacl = \"public-read\"",
        )
        .replace(
            "destination = \"eu\"",
            "destination = \"eu\"\nowner_override = \"destination\"",
        );
    let c = Config::parse(&ok).unwrap();
    assert_eq!(c.source.acl, Some(CannedAcl::PublicRead));
    assert_eq!(c.rules[0].owner_override, Some(OwnerOverride::Destination));
    let e = err(&MINIMAL.replace("bucket = \"src\"", "bucket = \"src\"\nacl = \"world\""));
    assert!(e.contains("source.acl") && e.contains("world"), "{e}");
    let e = err(&MINIMAL.replace("bucket = \"dst\"", "bucket = \"dst\"\nacl = \"private\""));
    assert!(
        e.contains("destination[0].acl") && e.contains("owner_override"),
        "{e}"
    );
    let e = err(&MINIMAL.replace(
        "destination = \"eu\"",
        "destination = \"eu\"\nowner_override = \"source\"",
    ));
    assert!(e.contains("owner_override"), "{e}");
}

#[test]
fn rule_with_missing_destination_is_rejected() {
    let e = err(&MINIMAL.replace("destination = \"eu\"", "destination = \"ap\""));
    assert!(e.contains("rule[0].destination"), "{e}");
    assert!(e.contains("`ap`"), "{e}");
}

#[test]
fn duplicate_rule_ids_are_rejected() {
    let e = err(&format!(
        "{MINIMAL}\n[[rule]]\nid = \"all\"\npriority = 1\ndestination = \"eu\"\n"
    ));
    assert!(e.contains("rule[1].id"), "{e}");
}

#[test]
fn equal_priorities_for_one_destination_are_rejected() {
    let e = err(&format!(
        "{MINIMAL}\n[[rule]]\nid = \"two\"\ndestination = \"eu\"\n"
    ));
    assert!(e.contains("rule[1].priority"), "{e}");
}

#[test]
fn destination_equal_to_source_is_rejected() {
    let same = MINIMAL
        .replace("region = \"eu-west-1\"", "region = \"us-east-1\"")
        .replace("8334", "8333");
    let e = err(&same);
    assert!(e.contains("destination[0].region"), "{e}");
    assert!(e.contains("allow_same_region"), "{e}");
    let allowed = same.replace(
        "bucket = \"dst\"",
        "bucket = \"dst\"\nallow_same_region = true",
    );
    Config::parse(&allowed).unwrap();
    let itself = allowed.replace("bucket = \"dst\"", "bucket = \"src\"");
    assert!(err(&itself).contains("source bucket itself"));
}

#[test]
fn secrets_are_never_rendered() {
    let c = Config::parse(&MINIMAL.replace(
        "bucket = \"src\"",
        "bucket = \"src\"\naccess_key_id = \"AK\"\nsecret_access_key = \"TOPSECRET\"",
    ))
    .unwrap();
    let out = c.to_effective_toml();
    assert!(!out.contains("TOPSECRET"), "{out}");
    assert!(out.contains("<redacted>"), "{out}");
}

#[test]
fn part_size_keeps_uploads_within_ten_thousand_parts() {
    assert_eq!(plan_part_size(8 * MIB, GIB), 8 * MIB);
    let big = 200 * GIB;
    let p = plan_part_size(8 * MIB, big);
    assert!(big.div_ceil(p) <= MAX_PARTS);
    assert_eq!(p % MIB, 0);
    assert_eq!(plan_part_size(MIB, 10), MIN_PART_SIZE);
}

#[test]
fn a_source_prefix_is_a_directory_with_or_without_its_slash() {
    for (given, want) in [
        ("", Ok("")),
        ("team-b", Ok("team-b/")),
        ("team-b/", Ok("team-b/")),
        ("a/b", Ok("a/b/")),
        ("/team-b", Err("leading slash")),
        ("a//b", Err("empty")),
        ("a/../b", Err("..")),
        ("./a", Err(".")),
    ] {
        match (source_prefix(given), want) {
            (Ok(got), Ok(w)) => assert_eq!(got, w, "{given}"),
            (Err(e), Err(_)) => assert!(!e.is_empty(), "{given}"),
            (got, w) => panic!("{given}: got {got:?}, want {w:?}"),
        }
    }
}

proptest::proptest! {
#[test]
    fn any_size_plans_a_legal_part_size(size in 0u64..=MAX_OBJECT_SIZE, pref in MIN_PART_SIZE..=MAX_PART_SIZE) {
        let p = plan_part_size(pref, size);
        proptest::prop_assert!((MIN_PART_SIZE..=MAX_PART_SIZE).contains(&p));
        proptest::prop_assert!(size.div_ceil(p) <= MAX_PARTS);
    }
}

#[test]
fn a_metrics_section_without_an_address_serves_loopback_only() {
    let c = Config::parse(&format!("{MINIMAL}\n[metrics]\n")).unwrap();
    assert_eq!(c.metrics.unwrap().listen, "127.0.0.1:9464");
}

#[test]
fn a_config_holding_a_secret_is_warned_about_while_others_may_read_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("regionfs.toml");
    let with_secret = MINIMAL.replace(
        "endpoint = \"http://127.0.0.1:8333\"",
        "endpoint = \"http://127.0.0.1:8333\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"",
    );
    let cases = [
        (&with_secret, 0o644, true),
        (&with_secret, 0o640, true),
        (&with_secret, 0o600, false),
        (&MINIMAL.to_string(), 0o644, false),
    ];
    for (text, mode, warned) in cases {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let warning = Config::load(&path).unwrap().exposed_secret(&path);
        assert_eq!(warning.is_some(), warned, "mode {mode:o}: {warning:?}");
        if let Some(w) = warning {
            assert!(w.contains(&format!("chmod 600 {}", path.display())), "{w}");
        }
    }
}

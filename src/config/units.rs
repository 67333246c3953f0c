//! The human units a config and the command line are written in: byte counts
//! (`10GiB`, `4k`), durations (`500ms`, `1h30m`), octal modes (`"0644"`) and
//! instants (`2026-11-24T10:00:00Z`). Sizes, durations and instants are read
//! by maintained crates; each parse fails with an error that says what it
//! expected, and the caller names the field.

use super::*;

/// A byte count written as `10GiB`, `512MiB`, `100MB`, `4096` or `4k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    /// Units as the `bytesize` crate reads them: `k`/`kB` 1000, `Ki`/`KiB`
    /// 1024, up to exa; any case; a space or a fraction allowed.
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|_| {
                format!("invalid size {s:?}: write e.g. \"10GiB\", \"512MiB\" or \"4096\"")
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [
            ("TiB", 1024 * GIB),
            ("GiB", GIB),
            ("MiB", MIB),
            ("KiB", KIB),
        ] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{}", b / size, unit);
            }
        }
        if b >= MIB {
            write!(f, "{:.1}MiB", b as f64 / MIB as f64)
        } else {
            write!(f, "{b}")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size such as \"10GiB\" or a number of bytes")
        })? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A duration written as `0s`, `500ms`, `5m`, `1h30m` or `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    /// As the `humantime` crate reads durations: spans such as `500ms`,
    /// `5m`, `1h30m` or `2d 12h` added up.
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|_| {
                format!("invalid duration {s:?}: write e.g. \"0s\", \"500ms\", \"5m\" or \"1h30m\"")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_millis() != 0 || d.is_zero() && d.as_nanos() != 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let s = d.as_secs();
        if s != 0 && s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A permission mode written as an octal string, `"0644"` or `"755"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Mode)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid mode {s:?}: write an octal mode such as \"0644\""
                ))
            })
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

/// An instant written in RFC 3339 (`2026-11-24T10:00:00Z`, fractional
/// seconds and `+HH:MM` offsets allowed; a space may stand for the `T`) or
/// as `@<unix seconds>`.
pub fn parse_instant(text: &str) -> Result<std::time::SystemTime, String> {
    use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
    let bad = || format!("`{text}`: expected e.g. 2026-11-24T10:00:00Z or @1764000000");
    if let Some(secs) = text.strip_prefix('@') {
        let s: u64 = secs.parse().map_err(|_| bad())?;
        return Ok(std::time::UNIX_EPOCH + Duration::from_secs(s));
    }
    let mut t = text.trim().to_string();
    if t.get(10..11) == Some(" ") {
        t.replace_range(10..11, "T");
    }
    let at = DateTime::from_str(&t, DateTimeFormat::DateTimeWithOffset).map_err(|_| bad())?;
    std::time::SystemTime::try_from(at)
        .ok()
        .filter(|at| *at >= std::time::UNIX_EPOCH)
        .ok_or_else(bad)
}

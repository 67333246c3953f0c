//! POSIX attributes ↔ S3 user metadata, with the names s3fs uses (`mode`, `uid`,
//! `gid`, `mtime`) so buckets written by s3fs mount with the right modes, plus
//! rclone's fractional `mtime`. Extended attributes travel as s3fs does: one
//! `xattr` entry holding percent-encoded JSON of base64 values.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::store::{ObjectInfo, PutOptions};

pub const S_IFMT: u32 = libc::S_IFMT;
pub const S_IFREG: u32 = libc::S_IFREG;
pub(crate) const S_IFDIR: u32 = libc::S_IFDIR;
pub const S_IFLNK: u32 = libc::S_IFLNK;
pub(crate) const S_IFIFO: u32 = libc::S_IFIFO;
pub(crate) const S_IFCHR: u32 = libc::S_IFCHR;
pub(crate) const S_IFBLK: u32 = libc::S_IFBLK;
pub(crate) const S_IFSOCK: u32 = libc::S_IFSOCK;

/// `mode` has a set-user-ID or set-group-ID bit (which a write may clear).
pub(crate) fn has_set_id_bits(mode: u32) -> bool {
    mode & (libc::S_ISUID | libc::S_ISGID) != 0
}

/// `mode` without the privileges a write or chown takes away: the
/// set-user-ID bit, and the set-group-ID bit where it means set-group-ID
/// (group-executable; without it the bit marks mandatory locking).
pub(crate) fn without_privs(mode: u32) -> u32 {
    let mut m = mode & !libc::S_ISUID;
    if m & libc::S_IXGRP != 0 {
        m &= !libc::S_ISGID;
    }
    m
}

/// Extended attributes with this prefix are also the object's S3 tags.
pub(crate) const TAG_XATTR_PREFIX: &str = "user.tag.";

/// The attributes regionfs keeps with every object version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Full `st_mode`: type bits and permissions.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub(crate) mtime_s: i64,
    pub(crate) mtime_ns: u32,
    /// Access time, when set explicitly (utimensat); else the mtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<(i64, u32)>,
    /// Device number of character and block special files.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) rdev: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) xattrs: BTreeMap<String, Vec<u8>>,
}

/// The time `s` seconds and `ns` nanoseconds after the epoch (`s` may be negative).
pub(crate) fn to_time(s: i64, ns: u32) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

/// Whole seconds since the epoch (floored, also before it).
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    from_time(t).0
}

fn from_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let ns = d.subsec_nanos();
            (
                -(d.as_secs() as i64) - i64::from(ns > 0),
                if ns > 0 { 1_000_000_000 - ns } else { 0 },
            )
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl ObjectMeta {
    pub fn new(mode: u32, uid: u32, gid: u32) -> ObjectMeta {
        let mut m = ObjectMeta {
            mode,
            uid,
            gid,
            mtime_s: 0,
            mtime_ns: 0,
            atime: None,
            rdev: 0,
            content_type: None,
            xattrs: BTreeMap::new(),
        };
        m.set_mtime(SystemTime::now());
        m
    }

    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    pub fn mtime(&self) -> SystemTime {
        to_time(self.mtime_s, self.mtime_ns)
    }

    pub(crate) fn set_mtime(&mut self, t: SystemTime) {
        (self.mtime_s, self.mtime_ns) = from_time(t);
    }

    pub fn atime(&self) -> SystemTime {
        self.atime
            .map(|(s, ns)| to_time(s, ns))
            .unwrap_or_else(|| self.mtime())
    }

    pub(crate) fn set_atime(&mut self, t: SystemTime) {
        self.atime = Some(from_time(t));
    }

    /// Object tags: the extended attributes named `user.tag.<name>`.
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.xattrs
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(TAG_XATTR_PREFIX)
                    .map(|t| (t.to_string(), String::from_utf8_lossy(v).into_owned()))
            })
            .collect()
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    pub(crate) fn from_json(s: &str) -> Option<ObjectMeta> {
        serde_json::from_str(s).ok()
    }

    /// What to send with a new version of `key`: a regular file whose type
    /// nobody set gets one from its name ([`content_type_for`], as s3fs does).
    pub(crate) fn to_put_options_for(&self, key: &str) -> PutOptions {
        let mut o = self.to_put_options();
        if o.content_type.is_none() && self.mode & S_IFMT == S_IFREG {
            o.content_type = content_type_for(key).map(str::to_string);
        }
        o
    }

    /// What to send with a new version.
    pub(crate) fn to_put_options(&self) -> PutOptions {
        let mut md = BTreeMap::new();
        md.insert("mode".to_string(), self.mode.to_string());
        md.insert("uid".to_string(), self.uid.to_string());
        md.insert("gid".to_string(), self.gid.to_string());
        md.insert("mtime".to_string(), self.mtime_s.to_string());
        if self.mtime_ns != 0 {
            md.insert("mtime-nsec".to_string(), self.mtime_ns.to_string());
        }
        if self.rdev != 0 {
            md.insert("rdev".to_string(), self.rdev.to_string());
        }
        if let Some((s, ns)) = self.atime {
            md.insert("atime".to_string(), format!("{s}.{ns:09}"));
        }
        if !self.xattrs.is_empty() {
            let map: BTreeMap<&String, String> = self
                .xattrs
                .iter()
                .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
                .collect();
            let json = serde_json::to_string(&map).unwrap_or_default();
            md.insert(
                "xattr".to_string(),
                crate::store::url_encode_path(&json, false),
            );
        }
        PutOptions {
            content_type: self.content_type.clone(),
            metadata: md,
            tags: self.tags(),
            ..PutOptions::default()
        }
    }

    /// Reads the attributes of an object written by regionfs, s3fs or rclone;
    /// whatever is missing comes from `default` (the mount's defaults) and the
    /// object's Last-Modified.
    pub(crate) fn from_object(info: &ObjectInfo, default: &ObjectMeta) -> ObjectMeta {
        let md = &info.metadata;
        let num = |k: &str| md.get(k).and_then(|v| v.trim().parse::<u32>().ok());
        let mut m = default.clone();
        if let Some(mode) = num("mode") {
            m.mode = if mode & S_IFMT == 0 {
                (default.mode & S_IFMT) | (mode & 0o7777)
            } else {
                mode
            };
        }
        if let Some(u) = num("uid") {
            m.uid = u;
        }
        if let Some(g) = num("gid") {
            m.gid = g;
        }
        m.rdev = num("rdev").unwrap_or(0);
        m.atime = md.get("atime").and_then(|v| {
            let (s, ns) = v.split_once('.').unwrap_or((v, "0"));
            Some((s.parse().ok()?, ns.parse().ok()?))
        });
        match md.get("mtime").and_then(|v| v.trim().parse::<f64>().ok()) {
            Some(t) => {
                m.mtime_s = t.floor() as i64;
                m.mtime_ns = num("mtime-nsec")
                    .unwrap_or(((t - t.floor()) * 1e9) as u32)
                    .min(999_999_999);
            }
            None => {
                if let Some(t) = info.last_modified {
                    m.set_mtime(t);
                }
            }
        }
        m.content_type = info.content_type.clone();
        if let Some(x) = md.get("xattr") {
            m.xattrs = decode_xattrs(x);
        }
        m
    }
}

/// A file capability set by another client (s3fs stores every xattr here)
/// is dropped: regionfs never clears one on a write (it asks the kernel to
/// leave that to it, `FUSE_HANDLE_KILLPRIV_V2`), so it never serves one.
const DROPPED_XATTR: &str = "security.capability";

fn decode_xattrs(v: &str) -> BTreeMap<String, Vec<u8>> {
    let json = percent_decode(v);
    let map: BTreeMap<String, String> = serde_json::from_str(&json).unwrap_or_default();
    map.into_iter()
        .filter(|(k, _)| k != DROPPED_XATTR)
        .filter_map(|(k, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .ok()
                .map(|b| (k, b))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Content-Type a new file is uploaded with, from its name's extension
/// (as s3fs does with mime.types); `None` leaves the store's default. The
/// table holds the common types only, so it is the same on every host.
pub(crate) fn content_type_for(key: &str) -> Option<&'static str> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty() {
        return None; // a dot file: `.bashrc` has no extension
    }
    let t = match ext.to_ascii_lowercase().as_str() {
        "txt" | "text" | "log" | "conf" | "cfg" | "ini" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "js" | "mjs" => "text/javascript",
        "xml" => "application/xml",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "bz2" => "application/x-bzip2",
        "xz" => "application/x-xz",
        "zst" => "application/zstd",
        "7z" => "application/x-7z-compressed",
        "wasm" => "application/wasm",
        "sql" => "application/sql",
        "sqlite" | "db" => "application/vnd.sqlite3",
        "parquet" => "application/vnd.apache.parquet",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "ico" => "image/vnd.microsoft.icon",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        _ => return None,
    };
    Some(t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_files_content_type_comes_from_its_extension_only() {
        use super::content_type_for as ct;
        assert_eq!(ct("a/doc.txt"), Some("text/plain"));
        assert_eq!(ct("Photo.JPG"), Some("image/jpeg"));
        assert_eq!(ct("site/index.html"), Some("text/html"));
        assert_eq!(ct("backup.tar.gz"), Some("application/gzip"));
        assert_eq!(
            ct("a.dir/README"),
            None,
            "a dot in a directory is no extension"
        );
        assert_eq!(ct(".bashrc"), None);
        assert_eq!(ct("data.unknownext"), None);
    }

    use super::*;

    #[test]
    fn a_file_capability_from_another_client_is_dropped_other_attributes_kept() {
        let mut m = ObjectMeta::new(S_IFREG | 0o755, 0, 0);
        m.xattrs.insert("user.a".into(), b"1".to_vec());
        m.xattrs
            .insert("security.capability".into(), b"caps".to_vec());
        m.xattrs.insert("trusted.b".into(), b"2".to_vec());
        let info = ObjectInfo {
            metadata: m.to_put_options().metadata,
            ..Default::default()
        };
        let back = ObjectMeta::from_object(&info, &ObjectMeta::new(S_IFREG | 0o644, 0, 0));
        assert_eq!(
            back.xattrs.keys().collect::<Vec<_>>(),
            ["trusted.b", "user.a"]
        );
    }

    #[test]
    fn a_write_takes_set_user_id_and_set_group_id_only_where_group_executable() {
        assert_eq!(without_privs(S_IFREG | 0o6755), S_IFREG | 0o0755);
        assert_eq!(without_privs(S_IFREG | 0o6745), S_IFREG | 0o2745);
        assert_eq!(without_privs(S_IFREG | 0o1644), S_IFREG | 0o1644);
    }

    #[test]
    fn attributes_round_trip_through_s3fs_style_metadata() {
        let mut m = ObjectMeta::new(S_IFREG | 0o640, 1000, 100);
        m.mtime_ns = 123;
        m.xattrs
            .insert("user.note".into(), b"hi \x00there".to_vec());
        let opts = m.to_put_options();
        assert_eq!(opts.metadata["mode"], (S_IFREG | 0o640).to_string());
        let info = ObjectInfo {
            metadata: opts.metadata,
            ..Default::default()
        };
        let back = ObjectMeta::from_object(&info, &ObjectMeta::new(S_IFREG | 0o644, 0, 0));
        assert_eq!(back, m);
    }

    #[test]
    fn objects_without_metadata_get_defaults_and_last_modified() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let info = ObjectInfo {
            last_modified: Some(t),
            ..Default::default()
        };
        let d = ObjectMeta::new(S_IFREG | 0o644, 5, 6);
        let m = ObjectMeta::from_object(&info, &d);
        assert_eq!(
            (m.mode, m.uid, m.gid, m.mtime()),
            (S_IFREG | 0o644, 5, 6, t)
        );
    }

    #[test]
    fn rclone_fractional_mtime_is_read() {
        let mut info = ObjectInfo::default();
        info.metadata.insert("mtime".into(), "1700000000.5".into());
        let m = ObjectMeta::from_object(&info, &ObjectMeta::new(S_IFREG | 0o644, 0, 0));
        assert_eq!((m.mtime_s, m.mtime_ns), (1_700_000_000, 500_000_000));
    }
}

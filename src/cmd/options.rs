//! Mount options, as `regionfs mount -o` and an /etc/fstab line give them,
//! and the mount helper `mount -t fuse.regionfs` runs
//! (`/sbin/mount.fuse.regionfs`, a link to this binary).
//!
//! What mount(8) users expect: the options that only tell mount(8), systemd
//! or the kernel's generic mount code something (`_netdev`, `nofail`,
//! `noauto`, `x-systemd.*`, `defaults`, `nodev`, …) are accepted and
//! ignored; the ones that mean something here change the configuration;
//! anything else is an error naming the option, never silently dropped.

use crate::*;

/// What the options change beyond the configuration.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    /// `as_of=T`: a point-in-time mount (as `--as-of`).
    pub as_of: Option<String>,
}

/// Options mount(8), systemd or the generic mount code act on; nothing to
/// do here.
const IGNORED: &[&str] = &[
    "defaults",
    "rw",
    "auto",
    "noauto",
    "_netdev",
    "nofail",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "async",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
];

/// Applies the comma-separated `options` to `config`.
pub(crate) fn apply(options: &str, config: &mut Config) -> anyhow::Result<Extra> {
    let mut extra = Extra::default();
    for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match (name, value) {
            ("ro", None) => config.mount.read_only = true,
            ("allow_other", None) => config.mount.allow_other = true,
            ("as_of", Some(t)) => extra.as_of = Some(t.to_string()),
            (n, _) if n.starts_with("x-") || n == "comment" => {}
            (n, None) if IGNORED.contains(&n) => {}
            _ => bail!(
                "mount option `{opt}` is not known (regionfs takes ro, allow_other, \
                 as_of=TIME and ignores the generic ones: _netdev, nofail, noauto, \
                 x-systemd.*, …)"
            ),
        }
    }
    Ok(extra)
}

/// Whether the binary was started as the mount helper (by its link's name).
pub(crate) fn is_helper(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "mount.fuse.regionfs")
}

/// `mount.fuse.regionfs CONFIG MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS]`, as
/// mount(8) calls it: mounts as `regionfs mount --daemon` does and returns
/// once the mount is up.
pub(crate) fn helper(args: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    let mut positional = Vec::new();
    let mut options = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let o = it.next().context("-o needs the options")?;
                options = o
                    .to_str()
                    .context("mount options are not UTF-8")?
                    .to_string();
            }
            Some("-t" | "-N") => {
                it.next();
            }
            Some(flag) if flag.starts_with('-') => {} // -s -f -n -v: nothing to do
            _ => positional.push(std::path::PathBuf::from(a)),
        }
    }
    let [config_path, mountpoint] = positional.as_slice() else {
        bail!("usage: mount.fuse.regionfs CONFIG MOUNTPOINT [-o OPTIONS]");
    };
    let mut config = load(config_path)?;
    let extra = apply(&options, &mut config)?;
    if let Some(t) = &extra.as_of {
        config.mount.as_of = Some(parse_instant(t)?);
    }
    cmd::mount::daemonize(
        config_path,
        &config,
        mountpoint,
        extra.as_of.as_deref(),
        Some(&options),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "[source]\nname = \"a\"\nregion = \"us-east-1\"\nbucket = \"b\"\n\
             endpoint = \"http://127.0.0.1:9\"\n[cache]\ndir = \"/tmp/x\"\n",
        )
        .unwrap()
    }

    #[test]
    fn fstab_options_set_what_they_mean_and_the_generic_ones_change_nothing() {
        let mut c = config();
        let extra = apply(
            "defaults,_netdev,nofail,noauto,x-systemd.automount,x-systemd.mount-timeout=30,\
             comment=x,nodev,nosuid,noatime,allow_other,ro,as_of=@1764000000",
            &mut c,
        )
        .unwrap();
        assert!(c.mount.read_only && c.mount.allow_other);
        assert_eq!(extra.as_of.as_deref(), Some("@1764000000"));

        let mut plain = config();
        apply(
            "rw,_netdev,nofail,x-systemd.requires=network-online.target",
            &mut plain,
        )
        .unwrap();
        assert!(!plain.mount.read_only && !plain.mount.allow_other);
    }

    #[test]
    fn an_unknown_mount_option_is_an_error_naming_it() {
        let e = apply("_netdev,big_writes", &mut config())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`big_writes`"), "{e}");
        let e = apply("ro=1", &mut config()).unwrap_err().to_string();
        assert!(e.contains("`ro=1`"), "{e}");
    }

    #[test]
    fn the_helper_is_known_by_its_link_name() {
        assert!(is_helper("/sbin/mount.fuse.regionfs".as_ref()));
        assert!(is_helper("mount.fuse.regionfs".as_ref()));
        assert!(!is_helper("/usr/bin/regionfs".as_ref()));
    }
}

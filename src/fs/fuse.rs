//! The thin fuser adapter: decode a request, call one method of [`Core`] on the
//! tokio runtime, reply (mapping errors through `FsError::errno`). It makes no
//! decisions. Replies are `Send + 'static`, so a request that may wait runs
//! as its own task and the FUSE threads return at once; what cannot wait (a
//! lookup known from memory, a write whose file's lock is free and whose
//! growth fits the cache) is answered on the FUSE thread, which spares the
//! hop and, for writes, the copy of the data.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::{Attr, Caller, Core, DirEntry, Opened, SetAttr};
use crate::fs::FsError;
use crate::meta::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFSOCK};

pub(crate) struct FuseFs {
    core: Arc<Core>,
    rt: tokio::runtime::Handle,
}

impl FuseFs {
    pub fn new(core: Arc<Core>, rt: tokio::runtime::Handle) -> FuseFs {
        FuseFs { core, rt }
    }

    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f);
    }
}

/// Keeps the inode table bounded: once a second, the entries
/// [`Core::trim`] lets go of are dropped from the kernel's cache (whose
/// FORGET then frees the nodes). Its own thread: an invalidation waits for
/// the kernel's lock on the parent directory, which a request being answered
/// by the FUSE threads may hold.
pub(crate) fn spawn_trimmer(core: Arc<Core>, notifier: fuser::Notifier) {
    let core = Arc::downgrade(&core);
    let _ = std::thread::Builder::new()
        .name("regionfs-trim".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let Some(core) = core.upgrade() else { return };
            for (parent, name) in core.trim() {
                if let Err(e) = notifier.inval_entry(INodeNo(parent), OsStr::new(&name)) {
                    // ENOENT: the kernel had already dropped it.
                    let gone = [libc::ENODEV, libc::EBADF, libc::ENOTCONN, libc::EPIPE];
                    if e.raw_os_error().is_some_and(|c| gone.contains(&c)) {
                        return; // the mount is gone
                    }
                }
            }
        });
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn kind(mode: u32) -> FileType {
    match mode & S_IFMT {
        S_IFDIR => FileType::Directory,
        S_IFLNK => FileType::Symlink,
        S_IFIFO => FileType::NamedPipe,
        S_IFCHR => FileType::CharDevice,
        S_IFBLK => FileType::BlockDevice,
        S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The set-ID bits a write or truncate by an unprivileged caller clears.
fn kill_privs() -> SetAttr {
    SetAttr {
        kill_privs: true,
        ..SetAttr::default()
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// Replies with an entry, counting the kernel's new reference.
fn entry(core: &Core, r: Result<Attr, FsError>, reply: ReplyEntry) {
    match r.and_then(|a| core.remember(a.ino)) {
        Ok(a) => reply.entry(&core.ttl(), &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // regionfs clears set-user-ID and set-group-ID bits itself (on the
        // WRITE, SETATTR and OPEN that carry the kernel's request to, see
        // `SetAttr::kill_privs`), and stores no security.capability: the
        // kernel then stops asking for that attribute before every write(2),
        // a round trip to this process per call, and the largest share of a
        // passthrough write's time while the CPUs are busy (2026-12-06).
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Passthrough excludes the writeback cache; where the kernel has it,
        // it serves reads and writes of cache files with no copy through
        // here (see `fs::passthrough`). Depth 2: the cache may be on a
        // stacked filesystem (overlayfs), which then cannot stack on this.
        let passthrough = self.core.passthrough_allowed()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        let writeback = !passthrough
            && self.core.writeback_cache()
            // The kernel flushes dirty pages (and sends its mtime) before the
            // FLUSH of every close, so close still stages complete data.
            && config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE).is_ok();
        self.core.set_kernel_caching(passthrough, writeback);
        tracing::info!(passthrough, writeback, "kernel caching");
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Each background request (write-back of up to 1 MiB, readahead) is
        // buffered here while it waits for its file's lock: this bounds that
        // memory to 16 MiB.
        let _ = config.set_max_background(16);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // Answered on this thread when memory suffices (`ls -l` after a
        // listing): no hand-off to the runtime and back.
        if let Some(a) = self.core.lookup_cached(parent.0, name.as_bytes()) {
            return entry(&self.core, Ok(a), reply);
        }
        let (core, name) = (self.core.clone(), name.as_bytes().to_vec());
        self.spawn(async move { entry(&core, core.lookup(parent.0, &name).await, reply) });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(ino.0) {
            Ok(a) => reply.attr(&self.core.ttl(), &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let core = self.core.clone();
        // What Linux's VFS would clear, where the kernel now leaves it to
        // regionfs: on a chown always, even `chown(f, -1, -1)` by root
        // (which arrives with nothing to set); on a truncate by a caller
        // other than root (the request does not say whether the caller has
        // CAP_FSETID); asked with nothing else (a passthrough write by a
        // caller without CAP_FSETID: root's writes never ask).
        let nothing = (mode, uid, gid, size, atime, mtime) == (None, None, None, None, None, None);
        let kill_privs =
            uid.is_some() || gid.is_some() || nothing || (size.is_some() && req.uid() != 0);
        let set = SetAttr {
            fh: fh.map(|f| f.0),
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            kill_privs,
        };
        self.spawn(async move {
            match core.setattr(ino.0, set).await {
                Ok(a) => reply.attr(&core.ttl(), &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let core = self.core.clone();
        self.spawn(async move {
            match core.readlink(ino.0).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (core, name, who) = (self.core.clone(), name.as_bytes().to_vec(), caller(req));
        self.spawn(async move {
            entry(
                &core,
                core.mknod(parent.0, &name, mode & !umask, rdev, who).await,
                reply,
            )
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (core, name, who) = (self.core.clone(), name.as_bytes().to_vec(), caller(req));
        self.spawn(async move {
            entry(
                &core,
                core.mkdir(parent.0, &name, mode & !umask, who).await,
                reply,
            )
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, name) = (self.core.clone(), name.as_bytes().to_vec());
        self.spawn(async move { empty(core.unlink(parent.0, &name).await, reply) });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, name) = (self.core.clone(), name.as_bytes().to_vec());
        self.spawn(async move { empty(core.rmdir(parent.0, &name).await, reply) });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (core, name, who) = (
            self.core.clone(),
            link_name.as_bytes().to_vec(),
            caller(req),
        );
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(async move {
            entry(
                &core,
                core.symlink(parent.0, &name, &target, who).await,
                reply,
            )
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        self.spawn(async move {
            empty(
                core.rename(parent.0, &name, newparent.0, &newname, flags.bits())
                    .await,
                reply,
            )
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Objects cannot share a body: hard links are not supported.
        reply.error(Errno::EPERM);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let core = self.core.clone();
        let kill = flags.0 & libc::O_TRUNC != 0 && req.uid() != 0;
        self.spawn(async move {
            let opened = match core.open(ino.0, flags.0).await {
                Ok(o) if kill && core.has_set_id_bits(ino.0) => {
                    match core.setattr(ino.0, kill_privs()).await {
                        Ok(_) => Ok(o),
                        Err(e) => {
                            let _ = core.release(o.fh).await;
                            Err(e)
                        }
                    }
                }
                other => other,
            };
            match opened {
                Ok(o) => match backing(&core, ino.0, &o, |f| reply.open_backing(f)) {
                    Some(t) => {
                        reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), id(&t))
                    }
                    None => reply.opened(FileHandle(o.fh), fopen_flags(&o)),
                },
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(r) = self.core.read_now(fh.0, offset, size) {
            match r {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            }
            return;
        }
        let core = self.core.clone();
        self.spawn(async move {
            match core.read(fh.0, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            let (core, data) = (self.core.clone(), data.to_vec());
            return self.spawn(async move {
                let r = match core.setattr(ino.0, kill_privs()).await {
                    Ok(_) => core.write(fh.0, offset, &data).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(errno(&e)),
                }
            });
        }
        // The first write of a file may start its early upload, which
        // spawns onto the runtime.
        let _rt = self.rt.enter();
        if let Some(r) = self.core.write_now(fh.0, offset, data) {
            match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
            return;
        }
        let (core, data) = (self.core.clone(), data.to_vec());
        self.spawn(async move {
            match core.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        self.spawn(async move { empty(core.flush(fh.0).await, reply) });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        self.spawn(async move { empty(core.release(fh.0).await, reply) });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        self.spawn(async move { empty(core.fsync(fh.0).await, reply) });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(self.core.opendir(ino.0)), FopenFlags::empty());
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let core = self.core.clone();
        self.spawn(async move {
            match core.readdir_at(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    let all = dots(ino.0, (*entries).clone());
                    for (i, e) in all.iter().enumerate().skip(offset as usize) {
                        if reply.add(INodeNo(e.ino), i as u64 + 1, kind(e.mode), &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let core = self.core.clone();
        self.spawn(async move {
            match core.readdir_at(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    let all = dots(ino.0, (*entries).clone());
                    for (i, e) in all.iter().enumerate().skip(offset as usize) {
                        let Ok(a) = core.getattr(e.ino) else {
                            continue;
                        };
                        if reply.add(
                            INodeNo(e.ino),
                            i as u64 + 1,
                            &e.name,
                            &core.ttl(),
                            &file_attr(&a),
                            Generation(0),
                        ) {
                            break;
                        }
                        if e.name != "." && e.name != ".." {
                            let _ = core.remember(e.ino);
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (used, _) = self.core.statfs();
        // A bucket has no size limit: report a large, mostly free volume.
        let blocks: u64 = 1 << 40;
        let used_blocks = used.div_ceil(4096);
        reply.statfs(
            blocks,
            blocks - used_blocks,
            blocks - used_blocks,
            1 << 32,
            1 << 32,
            4096,
            255,
            4096,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (core, name, value) = (
            self.core.clone(),
            name.to_string_lossy().into_owned(),
            value.to_vec(),
        );
        self.spawn(async move {
            empty(
                core.setxattr(ino.0, &name, Some(&value), flags).await,
                reply,
            )
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_string_lossy().into_owned();
        // `ls -l` asks every file for security.selinux and its ACL.
        match self.core.getxattr_cached(ino.0, &name) {
            Some(Ok(v)) => return xattr_reply(&v, size, reply),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        let core = self.core.clone();
        self.spawn(async move {
            match core.getxattr(ino.0, &name).await {
                Ok(v) => xattr_reply(&v, size, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let core = self.core.clone();
        self.spawn(async move {
            match core.listxattr(ino.0).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(n.as_bytes());
                        buf.push(0);
                    }
                    xattr_reply(&buf, size, reply)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, name) = (self.core.clone(), name.to_string_lossy().into_owned());
        self.spawn(async move { empty(core.setxattr(ino.0, &name, None, 0).await, reply) });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions).
        empty(self.core.getattr(ino.0).map(|_| ()), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (core, name, who) = (self.core.clone(), name.as_bytes().to_vec(), caller(req));
        self.spawn(async move {
            match core
                .create(parent.0, &name, mode & !umask, flags, who)
                .await
            {
                Ok((a, o)) => match core.remember(a.ino) {
                    Ok(a) => match backing(&core, a.ino, &o, |f| reply.open_backing(f)) {
                        Some(t) => reply.created_passthrough(
                            &core.ttl(),
                            &file_attr(&a),
                            Generation(0),
                            FileHandle(o.fh),
                            FopenFlags::empty(),
                            id(&t),
                        ),
                        None => reply.created(
                            &core.ttl(),
                            &file_attr(&a),
                            Generation(0),
                            FileHandle(o.fh),
                            fopen_flags(&o),
                        ),
                    },
                    Err(e) => reply.error(errno(&e)),
                },
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

fn fopen_flags(o: &Opened) -> FopenFlags {
    if o.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

/// The kernel's id of the backing file an open is to be served from, made
/// by `register` (the reply's `open_backing`) for the inode's first one.
/// `None`: a cached open, or the kernel refused the file (then the open,
/// and every later one, is cached: see `Core::passthrough_refused`).
fn backing(
    core: &Core,
    ino: u64,
    o: &Opened,
    register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
    o.backing.as_ref()?;
    match core.backing_token(ino, register) {
        Ok(t) if t.is::<BackingId>() => Some(t),
        Ok(_) => None,
        Err(e) => {
            core.passthrough_refused(o.fh, &e);
            None
        }
    }
}

fn id(token: &Arc<dyn std::any::Any + Send + Sync>) -> &BackingId {
    token
        .downcast_ref()
        .expect("`backing` returns BackingId tokens only")
}

fn xattr_reply(v: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if (size as usize) < v.len() {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(v);
    }
}

/// `.` and `..` first, as readdir expects.
fn dots(ino: u64, entries: Vec<DirEntry>) -> Vec<DirEntry> {
    let mut all = vec![
        DirEntry {
            ino,
            name: ".".into(),
            mode: S_IFDIR,
        },
        DirEntry {
            ino,
            name: "..".into(),
            mode: S_IFDIR,
        },
    ];
    all.extend(entries);
    all
}

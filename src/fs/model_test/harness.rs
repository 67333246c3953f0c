//! Actors applying steps to the system under test (`world`) and to their
//! own model, and the runs that drive them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::steps::{universe, Len, Step, ME, NAMES, P, SLOTS};
use super::tree::{content, write_into, Expect, Kind, Model};
use super::world::{block, errno, errno_of, tag, Driver, Up, World, LAST_ERROR};

use crate::fs::FsError;
use crate::fs::{Core, SetAttr};
use crate::meta::{S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG};
use crate::store::{ObjectStore, PutBody, PutOptions};

/// One actor: its own subtree, its model of it, its open files, its log.
pub(super) struct Actor {
    pub(crate) model: Model,
    /// Open files: (handle, model node).
    slots: [Option<(u64, usize)>; SLOTS],
    /// Prefix of every path and key: "" or "p1/".
    pub root: String,
    paths: Vec<String>,
    pub log: Vec<String>,
    step_no: u64,
    /// Keeps the bytes actors write apart.
    seed: u64,
    /// What another client PUT, by key: found by the mount, but copied to
    /// the destination only once the mount writes it again (a mount
    /// replicates the versions it writes).
    pub foreign: BTreeMap<String, Vec<u8>>,
}

impl Actor {
    pub(super) fn new(root: &str, seed: u64) -> Actor {
        Actor {
            model: Model::new(),
            slots: Default::default(),
            root: root.to_string(),
            paths: universe(),
            log: Vec::new(),
            step_no: 0,
            seed,
            foreign: BTreeMap::new(),
        }
    }
}

/// An actor applying steps to a running core.
pub(super) struct At<'a> {
    pub a: &'a mut Actor,
    pub up: &'a Up,
    pub delay: Option<u64>,
}

impl At<'_> {
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        block(self.up, f).unwrap_or_else(|e| self.fail(e))
    }

    fn path(&self, p: P) -> String {
        let existing: Vec<&String> = self.a.model.paths.keys().collect();
        match p {
            P::Existing(n) if !existing.is_empty() => existing[n as usize % existing.len()].clone(),
            P::Existing(n) => self.a.paths[n as usize % self.a.paths.len()].clone(),
            P::In(d, n) => {
                let mut dirs: Vec<&str> = vec![""];
                dirs.extend(
                    self.a
                        .model
                        .paths
                        .iter()
                        .filter(|(_, &i)| self.a.model.nodes[i].kind == Kind::Dir)
                        .map(|(p, _)| p.as_str()),
                );
                let dir = dirs[d as usize % dirs.len()];
                let name = NAMES[n as usize % NAMES.len()];
                if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                }
            }
            P::Any(n) => self.a.paths[n as usize % self.a.paths.len()].clone(),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "{what}\nwrite-back delay {:?} ms; steps so far{}:\n  {}",
            self.delay,
            if self.a.root.is_empty() {
                String::new()
            } else {
                format!(" of the actor in `{}`", self.a.root)
            },
            self.a.log.join("\n  ")
        );
    }

    fn expect(&self, step: &Step, want: Expect, got: Expect) {
        if want != got {
            let error = LAST_ERROR.with(|l| l.borrow().clone());
            self.fail(format!(
                "{step:?}: the model says {want:?}, the core answered {got:?} ({error})"
            ));
        }
    }

    /// Another client's PUT of a new object, at a name the actor does not
    /// have, in a directory it has, with nothing of the mount's queued at,
    /// over or under it (a queued delete would land after the PUT and
    /// remove it: the last write to reach the bucket wins, as between any
    /// two writers of one key).
    fn foreign(&mut self, p: P, l: Len) {
        let path = self.path(p);
        if self.a.model.walk_parent(&path).is_err() || self.a.model.paths.contains_key(&path) {
            return;
        }
        let key = format!("{}{path}", self.a.root);
        let svc = self.up.svc.as_ref().unwrap();
        // The journal, and the queue: an op done in the journal stays
        // queued until its completion is applied here.
        let open = self.block(svc.journal.open_ops()).unwrap();
        let under = format!("{key}/");
        let queued = !svc.uploader.pending_for(&key).is_empty()
            || !svc.uploader.pending_under(&under).is_empty();
        if queued
            || open
                .iter()
                .any(|o| o.key == key || o.key.starts_with(&under))
        {
            return;
        }
        let data = content(self.a.seed + self.a.step_no, l.bytes());
        let put = self.block(self.up.src.put(
            &key,
            PutBody::Bytes(data.clone().into()),
            &PutOptions::default(),
        ));
        put.unwrap();
        self.a.model.add(&path, Kind::File(data.clone()), 0o644);
        self.a.foreign.insert(key, data);
    }

    /// Held uploads: waits until no upload runs (nor waits for its
    /// completion to be applied), so that a sequence repeats exactly.
    pub(super) fn quiesce(&self) {
        if self.delay.is_some() {
            return;
        }
        let svc = self.up.svc.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while svc.uploader.busy() {
            if Instant::now() > deadline {
                self.fail("uploads still running after 20 s".into());
            }
            self.block(async { tokio::time::sleep(Duration::from_millis(1)).await });
        }
    }

    /// One step of the actor's own (not a settle, outage or restart).
    pub(super) fn apply(&mut self, step: &Step) {
        self.a.step_no += 1;
        self.a.log.push(format!("{step:?}"));
        let core = self.up.core();
        let root = self.a.root.clone();
        let d = Driver {
            core: &core,
            root: &root,
        };
        match *step {
            Step::Mkdir(p) => {
                let path = self.path(p);
                let want = self.a.model.walk_parent(&path).and_then(|_| {
                    if self.a.model.paths.contains_key(&path) {
                        Err(libc::EEXIST)
                    } else {
                        Ok(())
                    }
                });
                let got = errno(self.block(async {
                    let (pino, name) = d.parent(&path).await?;
                    core.mkdir(pino, name.as_bytes(), 0o755, ME)
                        .await
                        .map(|_| ())
                }));
                self.expect(step, want, got);
                if want.is_ok() {
                    self.a.model.add(&path, Kind::Dir, 0o755);
                }
            }
            Step::Create(p, l) => {
                let path = self.path(p);
                let data = content(self.a.seed + self.a.step_no, l.bytes());
                let want = self.a.model.walk_parent(&path).and_then(|_| {
                    match self.a.model.node(&path).map(|n| &n.kind) {
                        Some(Kind::Dir) => Err(libc::EISDIR),
                        Some(Kind::Symlink(_)) | Some(Kind::Fifo) => Err(libc::EEXIST),
                        _ => Ok(()),
                    }
                });
                if want == Err(libc::EEXIST) {
                    // The kernel follows links and opens fifos: not modelled.
                    return;
                }
                let got = errno(self.block(async {
                    let (pino, name) = d.parent(&path).await?;
                    let flags = libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC;
                    let fh = match core.lookup(pino, name.as_bytes()).await {
                        Ok(a) if a.mode & S_IFMT == S_IFDIR => return Err(FsError::IsDir),
                        Ok(a) => core.open(a.ino, flags).await?.fh,
                        Err(FsError::NotFound) => {
                            core.create(pino, name.as_bytes(), 0o644 | S_IFREG, flags, ME)
                                .await?
                                .1
                                .fh
                        }
                        Err(e) => return Err(e),
                    };
                    let w = d.write_file(fh, 0, &data).await;
                    let f = core.flush(fh).await;
                    core.release(fh).await?;
                    w.and(f)
                }));
                self.expect(step, want, got);
                if want.is_ok() {
                    match self.a.model.paths.get(&path) {
                        Some(&id) => self.a.model.nodes[id].kind = Kind::File(data),
                        None => {
                            self.a.model.add(&path, Kind::File(data), 0o644);
                        }
                    }
                }
            }
            Step::Open(s, p) => {
                let s = s as usize;
                if self.a.slots[s].is_some() {
                    return;
                }
                let path = self.path(p);
                let want = self.a.model.file(&path);
                if want == Err(-1) {
                    return;
                }
                let got = self.block(async {
                    let ino = d.file_ino(&path).await?;
                    Ok(core.open(ino, libc::O_RDWR).await?.fh)
                });
                self.expect(step, want.map(|_| ()), errno_of(&got));
                if let (Ok(id), Ok(fh)) = (want, got) {
                    self.a.slots[s] = Some((fh, id));
                }
            }
            Step::Write(s, o, l) => {
                let Some((fh, id)) = self.a.slots[s as usize] else {
                    return;
                };
                let data = content(self.a.seed + self.a.step_no, l.bytes());
                let got = errno(self.block(d.write_file(fh, o.at(), &data)));
                self.expect(step, Ok(()), got);
                if let Kind::File(buf) = &mut self.a.model.nodes[id].kind {
                    write_into(buf, o.at() as usize, &data);
                }
            }
            Step::Close(s) => {
                let Some((fh, _)) = self.a.slots[s as usize].take() else {
                    return;
                };
                let got = errno(self.block(async {
                    let f = core.flush(fh).await;
                    core.release(fh).await?;
                    f
                }));
                self.expect(step, Ok(()), got);
            }
            Step::Fsync(s) => {
                let Some((fh, _)) = self.a.slots[s as usize] else {
                    return;
                };
                let got = errno(self.block(core.fsync(fh)));
                self.expect(step, Ok(()), got);
            }
            Step::WriteAt(p, o, l) => {
                let path = self.path(p);
                let data = content(self.a.seed + self.a.step_no, l.bytes());
                let want = self.a.model.file(&path);
                if want == Err(-1) {
                    return;
                }
                let got = errno(self.block(async {
                    let ino = d.file_ino(&path).await?;
                    let fh = core.open(ino, libc::O_RDWR).await?.fh;
                    let w = d.write_file(fh, o.at(), &data).await;
                    let f = core.flush(fh).await;
                    core.release(fh).await?;
                    w.and(f)
                }));
                self.expect(step, want.map(|_| ()), got);
                if let Ok(id) = want {
                    if let Kind::File(buf) = &mut self.a.model.nodes[id].kind {
                        write_into(buf, o.at() as usize, &data);
                    }
                }
            }
            Step::Truncate(p, o) => {
                let path = self.path(p);
                let size = o.at();
                let want = self.a.model.file(&path);
                if want == Err(-1) {
                    return;
                }
                let got = errno(self.block(async {
                    let ino = d.ino(&path).await?;
                    let set = SetAttr {
                        size: Some(size),
                        ..Default::default()
                    };
                    core.setattr(ino, set).await.map(|_| ())
                }));
                self.expect(step, want.map(|_| ()), got);
                if let Ok(id) = want {
                    if let Kind::File(buf) = &mut self.a.model.nodes[id].kind {
                        buf.resize(size as usize, 0);
                    }
                }
            }
            Step::Rename(a, b) => {
                let (from, to) = (self.path(a), self.path(b));
                let mut after = self.a.model.clone();
                let want = after.rename(&from, &to);
                let got = errno(self.block(async {
                    let (p, n) = d.parent(&from).await?;
                    d.ino(&from).await?;
                    let (np, nn) = d.parent(&to).await?;
                    core.rename(p, n.as_bytes(), np, nn.as_bytes(), 0).await
                }));
                self.expect(step, want, got);
                if want.is_ok() {
                    self.a.model = after;
                }
            }
            Step::Unlink(p) => {
                let path = self.path(p);
                let want =
                    self.a
                        .model
                        .walk(&path)
                        .and_then(|id| match self.a.model.nodes[id].kind {
                            Kind::Dir => Err(libc::EISDIR),
                            _ => Ok(()),
                        });
                let got = errno(self.block(async {
                    let (pino, name) = d.parent(&path).await?;
                    core.unlink(pino, name.as_bytes()).await
                }));
                self.expect(step, want, got);
                if want.is_ok() {
                    self.a.model.paths.remove(&path);
                }
            }
            Step::Rmdir(p) => {
                let path = self.path(p);
                let want = self.a.model.walk(&path).and_then(|id| {
                    if self.a.model.nodes[id].kind != Kind::Dir {
                        Err(libc::ENOTDIR)
                    } else if !self.a.model.children(&path).is_empty() {
                        Err(libc::ENOTEMPTY)
                    } else {
                        Ok(())
                    }
                });
                let got = errno(self.block(async {
                    let (pino, name) = d.parent(&path).await?;
                    core.rmdir(pino, name.as_bytes()).await
                }));
                self.expect(step, want, got);
                if want.is_ok() {
                    self.a.model.paths.remove(&path);
                }
            }
            Step::RmRf(p) => {
                let path = self.path(p);
                let want = self.a.model.walk(&path).map(|_| ());
                let got = errno(self.block(d.rm_rf(&path)));
                self.expect(step, want, got);
                if want.is_ok() {
                    self.a.model.remove_tree(&path);
                }
            }
            Step::Symlink(p, t) => {
                let path = self.path(p);
                let target = format!("target-{t}").into_bytes();
                let want = self.a.model.walk_parent(&path).and_then(|_| {
                    if self.a.model.paths.contains_key(&path) {
                        Err(libc::EEXIST)
                    } else {
                        Ok(())
                    }
                });
                let got = errno(self.block(async {
                    let (pino, name) = d.parent(&path).await?;
                    core.symlink(pino, name.as_bytes(), &target, ME)
                        .await
                        .map(|_| ())
                }));
                self.expect(step, want, got);
                if want.is_ok() {
                    self.a.model.add(&path, Kind::Symlink(target), 0o777);
                }
            }
            Step::Mkfifo(p) => {
                let path = self.path(p);
                let want = self.a.model.walk_parent(&path).and_then(|_| {
                    if self.a.model.paths.contains_key(&path) {
                        Err(libc::EEXIST)
                    } else {
                        Ok(())
                    }
                });
                let got = errno(self.block(async {
                    let (pino, name) = d.parent(&path).await?;
                    core.mknod(pino, name.as_bytes(), S_IFIFO | 0o640, 0, ME)
                        .await
                        .map(|_| ())
                }));
                self.expect(step, want, got);
                if want.is_ok() {
                    self.a.model.add(&path, Kind::Fifo, 0o640);
                }
            }
            Step::Chmod(p, m) => {
                let path = self.path(p);
                let perm = m as u32 & 0o777;
                let want = self.a.model.walk(&path);
                if want.is_ok_and(|id| matches!(self.a.model.nodes[id].kind, Kind::Symlink(_))) {
                    // chmod follows links.
                    return;
                }
                let got = errno(self.block(async {
                    let ino = d.ino(&path).await?;
                    let set = SetAttr {
                        mode: Some(perm),
                        ..Default::default()
                    };
                    core.setattr(ino, set).await.map(|_| ())
                }));
                self.expect(step, want.map(|_| ()), got);
                if let Ok(id) = want {
                    self.a.model.nodes[id].perm = perm;
                }
            }
            Step::SetXattr(p, v) => {
                let path = self.path(p);
                let value = v.map(|v| vec![v; 1 + v as usize % 7]);
                let want = self.a.model.walk(&path).and_then(|id| {
                    match (
                        &self.a.model.nodes[id].kind,
                        &value,
                        &self.a.model.nodes[id].xattr,
                    ) {
                        (Kind::Symlink(_), _, _) => Err(-1),
                        (_, None, None) => Err(libc::ENODATA),
                        _ => Ok(id),
                    }
                });
                if want == Err(-1) {
                    return;
                }
                let got = errno(self.block(async {
                    let ino = d.ino(&path).await?;
                    core.setxattr(ino, "user.model", value.as_deref(), 0).await
                }));
                self.expect(step, want.map(|_| ()), got);
                if let Ok(id) = want {
                    self.a.model.nodes[id].xattr = value;
                }
            }
            Step::Check(p) => {
                let path = self.path(p);
                self.check_path(&core, &path, step);
            }
            Step::Foreign(p, l) => self.foreign(p, l),
            Step::Settle | Step::Outage(_) | Step::Restart => unreachable!(),
        }
    }

    /// Compares what the core shows at `path` with the model.
    fn check_path(&self, core: &Core, path: &str, step: &Step) {
        let root = self.a.root.clone();
        let d = Driver { core, root: &root };
        let want = self.a.model.walk(path);
        let got = self.block(async {
            let ino = d.ino(path).await?;
            let a = core.getattr(ino)?;
            let body = match a.mode & S_IFMT {
                S_IFREG => Some(d.read_all(ino).await?),
                S_IFLNK => Some(core.readlink(ino).await?),
                _ => None,
            };
            let names = if a.mode & S_IFMT == S_IFDIR {
                let mut n: Vec<String> = core
                    .readdir(ino)
                    .await?
                    .into_iter()
                    .map(|e| e.name)
                    .collect();
                n.sort();
                n
            } else {
                Vec::new()
            };
            Ok::<_, FsError>((a.mode, body, names))
        });
        let (id, (mode, body, names)) = match (want, got) {
            (Ok(id), Ok(g)) => (id, g),
            (Err(w), Err(g)) if w == g.errno() => return,
            (w, g) => self.fail(format!(
                "{step:?} of `{path}`: the model says {:?}, the core {:?}",
                w.map(|_| ()),
                g.map(|_| ())
            )),
        };
        let n = &self.a.model.nodes[id];
        if mode & S_IFMT != n.type_bits() || mode & 0o777 != n.perm {
            self.fail(format!(
                "{step:?}: `{path}` has mode {mode:o}, the model {:o}",
                n.type_bits() | n.perm
            ));
        }
        match &n.kind {
            Kind::File(b) | Kind::Symlink(b) => {
                let body = body.unwrap_or_default();
                if &body != b {
                    let first = body.iter().zip(b).position(|(x, y)| x != y);
                    self.fail(format!(
                        "{step:?}: `{path}` reads {} bytes ({}), the model has {} ({}); first difference at {first:?}",
                        body.len(),
                        tag(&body),
                        b.len(),
                        tag(b),
                    ));
                }
            }
            Kind::Dir => {
                let want: Vec<String> = self
                    .a
                    .model
                    .children(path)
                    .into_iter()
                    .map(|c| c.rsplit('/').next().unwrap().to_string())
                    .collect();
                if names != want {
                    self.fail(format!(
                        "{step:?}: `{path}` lists {names:?}, the model {want:?}"
                    ));
                }
            }
            Kind::Fifo => {}
        }
    }

    pub(super) fn close_all(&mut self) {
        let core = self.up.core();
        for s in 0..SLOTS {
            if let Some((fh, _)) = self.a.slots[s].take() {
                let got = errno(self.block(async {
                    let f = core.flush(fh).await;
                    core.release(fh).await?;
                    f
                }));
                self.expect(&Step::Close(s as u8), Ok(()), got);
            }
        }
    }

    /// Every path the actor's model has, and every other it could name,
    /// as a fresh core shows them.
    pub(super) fn check_all(&self) {
        let core = self.up.core();
        let mut all: Vec<String> = self.a.model.paths.keys().cloned().collect();
        all.push(String::new());
        for p in &self.a.paths {
            if !self.a.model.paths.contains_key(p) {
                all.push(p.clone());
            }
        }
        for p in all {
            self.check_path(&core, &p, &Step::Check(P::Any(0)));
        }
    }
}

/// Runs sequences of steps; panics at the first difference from the model.
pub(super) struct Run {
    pub(crate) world: World,
    up: Option<Up>,
    pub(crate) actors: Vec<Actor>,
    delay: Option<u64>,
}

/// The default window of uploads held in memory, and a small one that
/// spills most of a queue to the journal.
pub(super) const HELD: usize = 1024;
pub(super) const SMALL_WINDOW: usize = 3;

impl Run {
    /// One actor at the bucket's root; `foreign`: see [`World::new`].
    pub(super) fn new(write_back_delay_ms: Option<u64>, foreign: bool) -> Run {
        Run::with_window(write_back_delay_ms, foreign, HELD)
    }

    /// [`Run::new`] with `held` uploads in memory (see [`World::new`]).
    pub(super) fn with_window(write_back_delay_ms: Option<u64>, foreign: bool, held: usize) -> Run {
        let world = World::new(write_back_delay_ms, foreign, held);
        let up = world.start();
        Run {
            world,
            up: Some(up),
            actors: vec![Actor::new("", 0)],
            delay: write_back_delay_ms,
        }
    }

    /// `n` actors, each in a directory of its own (`p0`, `p1`, …).
    pub(super) fn with_actors(
        write_back_delay_ms: Option<u64>,
        foreign: bool,
        held: usize,
        n: usize,
    ) -> Run {
        let mut run = Run::with_window(write_back_delay_ms, foreign, held);
        run.actors = (0..n)
            .map(|i| Actor::new(&format!("p{i}/"), (i as u64 + 1) << 32))
            .collect();
        let core = run.up().core();
        for i in 0..n {
            let made = block(
                run.up(),
                core.mkdir(
                    crate::fs::inode::ROOT,
                    format!("p{i}").as_bytes(),
                    0o755,
                    ME,
                ),
            );
            made.unwrap().unwrap();
        }
        run
    }

    pub(super) fn up(&self) -> &Up {
        self.up.as_ref().unwrap()
    }

    /// The running core and the actors, to drive them at once.
    pub(super) fn split(&mut self) -> (&Up, &mut [Actor]) {
        (self.up.as_ref().unwrap(), &mut self.actors)
    }

    pub(super) fn at(&mut self, actor: usize) -> At<'_> {
        At {
            a: &mut self.actors[actor],
            up: self.up.as_ref().unwrap(),
            delay: self.delay,
        }
    }

    pub(super) fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        block(self.up(), f).unwrap_or_else(|e| self.fail(e))
    }

    pub(super) fn fail(&self, what: String) -> ! {
        let logs: Vec<String> = self
            .actors
            .iter()
            .map(|a| format!("actor `{}`:\n  {}", a.root, a.log.join("\n  ")))
            .collect();
        panic!(
            "{what}\nwrite-back delay {:?} ms; steps so far, by actor:\n{}",
            self.delay,
            logs.join("\n")
        );
    }

    /// A step of actor 0, or of the whole run (settle, outage, restart).
    pub(super) fn apply(&mut self, step: &Step) {
        self.at(0).quiesce();
        match step {
            Step::Settle | Step::Outage(_) | Step::Restart => {
                for a in &mut self.actors {
                    a.log.push(format!("{step:?}"));
                }
            }
            _ => return self.at(0).apply(step),
        }
        match step {
            Step::Settle => self.settle(),
            Step::Outage(n) => self.world.faulty.fail_next(*n as u64),
            _ => self.restart(),
        }
    }

    /// Waits (with a deadline) until nothing is queued for upload.
    pub(super) fn settle(&self) {
        let svc = self.up().svc.as_ref().unwrap();
        svc.uploader.hurry();
        let deadline = Instant::now() + Duration::from_secs(60);
        while svc.uploader.pending_count() > 0 || svc.uploader.busy() {
            // A permanent failure is retried only after a minute: it is
            // the answer.
            let (uploads, _) = self.block(svc.journal.backlog(60_000)).unwrap();
            if uploads.failed > 0 || Instant::now() > deadline {
                let open = self.block(svc.journal.open_ops()).unwrap();
                let views: Vec<String> = open
                    .iter()
                    .map(|o| svc.uploader.debug_key(&o.key))
                    .collect();
                self.fail(format!(
                    "uploads still queued: {open:#?}\n{views:#?}\n{}",
                    svc.uploader.debug_all()
                ));
            }
            self.block(async { tokio::time::sleep(Duration::from_millis(5)).await });
        }
    }

    fn close_all(&mut self) {
        for i in 0..self.actors.len() {
            self.at(i).close_all();
        }
    }

    /// As kill -9 does, after closing what is open; then a start from the
    /// journal.
    pub(super) fn restart(&mut self) {
        self.close_all();
        self.up = None;
        self.up = Some(self.world.start());
    }

    /// The end of a sequence: drain, then every promise of the oracle.
    pub(super) fn finish(mut self) {
        self.close_all();
        self.settle();
        let svc = self.up().svc.as_ref().unwrap();
        let left = self.block(svc.drain(Duration::from_secs(19), &|_| {}));
        let (uploads, replication) = self.block(svc.journal.backlog(60_000)).unwrap();
        if left > 0 || uploads.pending > 0 || uploads.failed > 0 {
            let open = self.block(svc.journal.open_ops()).unwrap();
            let tasks = self.block(svc.journal.open_tasks()).unwrap();
            self.fail(format!(
                "after the drain: {left} left, uploads {uploads:?}; open: {open:#?}; replication: {replication:?}, open tasks: {tasks:#?}; replicator: {}",
                svc.replicator.debug_state()
            ));
        }
        let eu = replication.get("eu").cloned().unwrap_or_default();
        if eu.pending > 0 || eu.failed > 0 {
            self.fail(format!("replication after the drain: {eu:?}"));
        }
        self.check_bucket();
        self.check_destination();
        // A remount sees the tree from the bucket alone.
        self.up = None;
        self.up = Some(self.world.start());
        for i in 0..self.actors.len() {
            self.at(i).check_all();
        }
    }
}

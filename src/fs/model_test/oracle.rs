//! The oracle, once a sequence is drained: the source bucket's live keys,
//! bytes, modes and xattrs are the actors' models (nothing deleted came
//! back, nothing is missing), and the destination holds every file of the
//! source.

use std::collections::{BTreeMap, BTreeSet};

use super::harness::{Actor, Run};
use super::tree::Kind;
use super::world::tag;
use crate::meta::{ObjectMeta, S_IFREG};
use crate::store::{GetRequest, MemoryStore, ObjectStore};

impl Run {
    fn live(store: &MemoryStore) -> BTreeMap<String, (Vec<u8>, ObjectMeta)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = BTreeMap::new();
            let mut token = None;
            loop {
                let page = store.list("", None, token, None).await.unwrap();
                for o in page.objects {
                    let info = store.head(&o.key, None).await.unwrap();
                    let body = store
                        .get(&o.key, GetRequest::default())
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                    let default = ObjectMeta::new(S_IFREG | 0o644, 0, 0);
                    out.insert(
                        o.key,
                        (body.to_vec(), ObjectMeta::from_object(&info, &default)),
                    );
                }
                match page.next_token {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            out
        })
    }

    /// The source's live keys are the models' trees: files with their bytes
    /// and modes, a marker per directory, nothing else.
    pub(super) fn check_bucket(&self) {
        let live = Self::live(&self.world.src);
        let mut expected: BTreeSet<String> = BTreeSet::new();
        for a in &self.actors {
            if !a.root.is_empty() {
                expected.insert(a.root.clone());
                expected.insert(format!("{}{}", a.root, crate::names::DIR_ATTRS));
            }
            self.check_actor_keys(a, &live, &mut expected);
        }
        for key in live.keys() {
            let internal = crate::names::is_index_key(key) || key.starts_with(".regionfs-");
            if !expected.contains(key) && !internal {
                self.fail(format!(
                    "`{key}` is live in the bucket but not in the model (a deleted name came back?)"
                ));
            }
        }
    }

    /// The source's live keys for one actor's model (see `check_bucket`).
    fn check_actor_keys(
        &self,
        a: &Actor,
        live: &BTreeMap<String, (Vec<u8>, ObjectMeta)>,
        expected: &mut BTreeSet<String>,
    ) {
        for (path, &id) in &a.model.paths {
            let n = &a.model.nodes[id];
            let key = format!("{}{path}", a.root);
            match &n.kind {
                Kind::Dir => {
                    let marker = format!("{key}/");
                    if !live.contains_key(&marker) {
                        self.fail(format!("directory `{path}` has no marker in the bucket"));
                    }
                    expected.insert(marker.clone());
                    expected.insert(format!("{marker}{}", crate::names::DIR_ATTRS));
                }
                Kind::File(b) | Kind::Symlink(b) => {
                    let Some((body, meta)) = live.get(&key) else {
                        self.fail(format!("`{path}` is not in the bucket"));
                    };
                    if body != b {
                        let history: Vec<String> = self
                            .world
                            .src
                            .history(&key)
                            .iter()
                            .map(|(v, d)| match d {
                                Some(d) => format!("{v}: {} bytes, {}", d.len(), tag(d)),
                                None => format!("{v}: deleted"),
                            })
                            .collect();
                        self.fail(format!(
                            "`{key}` holds {} bytes in the bucket ({}), the model {} ({}); its versions: {history:#?}",
                            body.len(),
                            tag(body),
                            b.len(),
                            tag(b),
                        ));
                    }
                    if meta.mode != n.type_bits() | n.perm {
                        self.fail(format!(
                            "`{path}` has mode {:o} in the bucket, the model {:o}",
                            meta.mode,
                            n.type_bits() | n.perm
                        ));
                    }
                    if meta.xattrs.get("user.model") != n.xattr.as_ref() {
                        self.fail(format!("`{path}`'s xattr in the bucket differs"));
                    }
                    expected.insert(key);
                }
                Kind::Fifo => {
                    let Some((_, meta)) = live.get(&key) else {
                        self.fail(format!("fifo `{path}` is not in the bucket"));
                    };
                    if meta.mode != n.type_bits() | n.perm {
                        self.fail(format!("fifo `{path}` has mode {:o}", meta.mode));
                    }
                    expected.insert(key);
                }
            }
        }
    }

    /// Every file the source holds is in the destination with the same
    /// bytes, and nothing the source deleted is live there.
    pub(super) fn check_destination(&self) {
        let src = Self::live(&self.world.src);
        let dst = Self::live(&self.world.dst);
        for (key, (body, _)) in &src {
            if key.ends_with('/') || key.ends_with(crate::names::DIR_ATTRS) {
                continue;
            }
            if crate::names::is_index_key(key) || key.starts_with(".regionfs-") {
                continue;
            }
            let foreign = self.actors.iter().any(|a| a.foreign.get(key) == Some(body));
            match dst.get(key) {
                Some((b, _)) if b == body => {}
                None if foreign => {}
                Some(_) => self.fail(format!("`{key}` differs in the destination")),
                None => self.fail(format!("`{key}` is not in the destination")),
            }
        }
        for key in dst.keys() {
            if !src.contains_key(key) && !key.starts_with(".regionfs-") {
                self.fail(format!("`{key}` is live in the destination only"));
            }
        }
    }
}

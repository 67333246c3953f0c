//! Whether a bucket takes object ACLs: asked once (its Object Ownership), and
//! switched off for good by the first refusal, with one warning either way.
//! What is found goes to a [`NoteAcl`] under the bucket's config name (the
//! journal keeps it for `regionfs status`). The uploader keeps one for the
//! source, the replicator one per destination.

use std::sync::{Arc, Mutex};

use super::{AclSupport, ObjectStore};

/// Told what a bucket was found to do, by the bucket's config name:
/// `enabled`, or `not supported: <why>`.
pub(crate) type NoteAcl = Arc<dyn Fn(String, String) + Send + Sync>;

/// Whether one bucket takes object ACLs, as far as is known.
pub(crate) struct AclState {
    found: Mutex<Option<AclSupport>>,
    name: String,
    note: NoteAcl,
}

impl AclState {
    /// `name`: the bucket's config name, which `note` is given.
    pub fn new(name: &str, note: NoteAcl) -> AclState {
        AclState {
            found: Mutex::new(None),
            name: name.to_string(),
            note,
        }
    }

    fn note(&self, s: &AclSupport) {
        let text = match s {
            AclSupport::Enabled => "enabled".to_string(),
            AclSupport::Disabled(why) => format!("not supported: {why}"),
        };
        (self.note)(self.name.clone(), text);
    }

    /// Whether ACLs go with writes to `store`: asked once, unless the answer
    /// was unknown (then asked again next time, without ACLs meanwhile).
    pub async fn enabled(&self, store: &dyn ObjectStore) -> bool {
        if let Some(s) = self.found.lock().unwrap().clone() {
            return s == AclSupport::Enabled;
        }
        match store.acl_support().await {
            Ok(AclSupport::Enabled) => {
                *self.found.lock().unwrap() = Some(AclSupport::Enabled);
                self.note(&AclSupport::Enabled);
                true
            }
            Ok(AclSupport::Disabled(why)) => {
                self.refused(store, &why);
                false
            }
            // Unknown for now (unreachable): skip ACLs this time, ask again.
            Err(e) => {
                tracing::debug!(bucket = %store.describe(), error = %e, "cannot tell whether the bucket takes ACLs");
                false
            }
        }
    }

    /// `store` refused an ACL: none go there from now on (one warning).
    pub fn refused(&self, store: &dyn ObjectStore, why: &str) {
        let mut s = self.found.lock().unwrap();
        if !matches!(*s, Some(AclSupport::Disabled(_))) {
            tracing::warn!(bucket = %store.describe(), reason = %why, "object ACLs are not supported here: ACLs are skipped for this bucket (bytes, metadata and tags still replicate)");
            let d = AclSupport::Disabled(why.to_string());
            self.note(&d);
            *s = Some(d);
        }
    }
}

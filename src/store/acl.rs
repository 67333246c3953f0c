//! Whether a bucket takes object ACLs: asked once (its Object Ownership), and
//! switched off for good by the first refusal, with one warning either way.
//! What is found is noted in the journal under the bucket's config name, for
//! `regionfs status`. The uploader keeps one for the source.

use super::*;

/// Whether a bucket takes object ACLs: asked once (its Object Ownership), and
/// switched off for good by the first refusal, with one warning either way.
/// What is found is noted in the journal under the bucket's config name, for
/// `regionfs status`.
pub struct AclState {
    pub(super) found: Mutex<Option<AclSupport>>,
    pub(super) name: String,
    pub(super) journal: Journal,
}

impl AclState {
    pub fn new(name: &str, journal: Journal) -> AclState {
        AclState {
            found: Mutex::new(None),
            name: name.to_string(),
            journal,
        }
    }

    pub(super) fn note(&self, s: &AclSupport) {
        let text = match s {
            AclSupport::Enabled => "enabled".to_string(),
            AclSupport::Disabled(why) => format!("not supported: {why}"),
        };
        let (journal, name) = (self.journal.clone(), self.name.clone());
        tokio::spawn(async move {
            let _ = journal.note_acl_support(name, text).await;
        });
    }

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

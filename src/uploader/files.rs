//! Which cache files queued operations read. A working file handed to a put
//! stays in the cache until no queued operation (held or spilled) and no
//! [`FileClaim`] names it; a writer about to change a file in place first
//! moves its readers to a copy ([`Uploader::repoint`]). Spilled operations are
//! looked up in the journal; when that lookup fails a file counts as read, so
//! a failure keeps a file rather than losing bytes an upload needs.

use std::sync::Arc;

use super::{Inner, Uploader};
use crate::journal::{JournalError, Op};

impl Uploader {
    /// The spilled ops (after seq `after`) reading cache file `name`; Err
    /// when they cannot be looked up.
    fn spilled_readers(&self, name: &str, after: i64) -> Result<Vec<i64>, ()> {
        let reader = self.reader().ok_or(())?;
        reader.reading(name, after).map_err(|e| {
            tracing::warn!(file = name, error = %e, "cannot read the spilled uploads");
        })
    }

    /// Whether a queued operation reads cache file `name`.
    pub fn reads(&self, name: &str) -> bool {
        let (held, after) = {
            let q = self.inner.queue.lock().unwrap();
            (q.is_read(name), q.spilled_after())
        };
        held || after.is_some_and(|a| {
            self.spilled_readers(name, a)
                .map_or(true, |r| !r.is_empty())
        })
    }

    /// The queued operations that read cache file `name`, by seq.
    pub fn users(&self, name: &str) -> Vec<i64> {
        let (mut seqs, after) = {
            let q = self.inner.queue.lock().unwrap();
            (q.readers(name), q.spilled_after())
        };
        if let Some(a) = after {
            seqs.extend(self.spilled_readers(name, a).unwrap_or_default());
        }
        seqs
    }

    /// Moves operations `seqs` from cache file `from` to `to`, a copy with
    /// the same bytes, in the journal and then in the queue: from then on
    /// `from` may be written. An attempt already reading `from` is checked
    /// like any (see "Files written after staging"); its retry reads `to`.
    pub(crate) async fn repoint(
        &self,
        seqs: &[i64],
        from: &str,
        to: &str,
    ) -> Result<(), JournalError> {
        // A spilled op repointed in the journal is read back repointed.
        let _boundary = self.inner.spill_lock.lock().await;
        for seq in seqs {
            self.inner
                .journal
                .repoint(*seq, to.to_string())
                .await
                .map_err(|e| self.noting_disk_failure(e))?;
        }
        let mut q = self.inner.queue.lock().unwrap();
        let q = &mut *q;
        for seq in seqs {
            let Some(key) = q.keys.get(seq) else { continue };
            let Some(o) = q
                .by_key
                .get_mut(key)
                .and_then(|l| l.iter_mut().find(|o| o.seq == *seq))
            else {
                continue;
            };
            if o.file.as_deref() != Some(from) {
                continue;
            }
            o.file = Some(to.to_string());
            q.release_file(from, Some(*seq));
            q.use_file(to, Some(*seq));
        }
        Ok(())
    }

    /// Whether a queued operation (or a [`FileClaim`]) still needs the cache
    /// file `name`.
    pub(crate) fn references(&self, name: &str) -> bool {
        let (held, after) = {
            let q = self.inner.queue.lock().unwrap();
            (q.uses(name) > 0, q.spilled_after())
        };
        held || after.is_some_and(|a| {
            self.spilled_readers(name, a)
                .map_or(true, |r| !r.is_empty())
        })
    }

    /// [`Uploader::references`] by anything but the operation `landed`
    /// (whose completion is being applied, see [`Landed`]).
    pub(crate) fn references_besides(&self, name: &str, landed: &Op) -> bool {
        let q = self.inner.queue.lock().unwrap();
        // `landed` counts under the file it is queued with now: a writer
        // that changes its file in place while it runs repoints it to a
        // copy (`repoint`), and the file it ran on is then someone else's.
        let queued = q
            .by_key
            .get(landed.key.as_str())
            .and_then(|l| l.iter().find(|o| o.seq == landed.seq));
        let file = queued.map_or(landed.file.as_deref(), |o| o.file.as_deref());
        let own = usize::from(file == Some(name));
        if q.uses(name) > own {
            return true;
        }
        let after = q.spilled_after();
        drop(q);
        after.is_some_and(|a| {
            self.spilled_readers(name, a)
                .map_or(true, |r| !r.is_empty())
        })
    }

    /// Marks the cache file `name` as needed from now until the returned claim
    /// drops. A caller about to stage an operation with a node's working file
    /// takes the claim when it reads the node, and drops it once the operation
    /// is queued: an upload finishing in between sees the file referenced and
    /// does not retire it (make it a clean copy, or delete it).
    pub(crate) fn claim(&self, name: &str) -> FileClaim {
        self.inner.queue.lock().unwrap().use_file(name, None);
        FileClaim {
            inner: self.inner.clone(),
            name: name.to_string(),
        }
    }
}

/// See [`Uploader::claim`].
pub(crate) struct FileClaim {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for FileClaim {
    fn drop(&mut self) {
        self.inner
            .queue
            .lock()
            .unwrap()
            .release_file(&self.name, None);
    }
}

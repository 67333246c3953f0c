//! Prometheus metrics on `[metrics] listen`, in the text format (encoded by
//! prometheus-client). Backlog figures are read from the journal at each scrape,
//! so they are exact and survive restarts; the replication lag histogram and the
//! byte counter count what this process did since it started.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use crate::journal::Journal;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

/// The registry and the gauges refreshed at each scrape.
pub struct Metrics {
    registry: Mutex<Registry>,
    uploads_pending: Gauge,
    uploads_pending_bytes: Gauge,
    uploads_failed: Gauge,
    uploads_oldest: FGauge,
    local_disk_failed: Gauge,
    repl_pending: Family<Labels, Gauge>,
    repl_pending_bytes: Family<Labels, Gauge>,
    repl_failed: Family<Labels, Gauge>,
    repl_oldest: Family<Labels, FGauge>,
    repl_missed: Family<Labels, Gauge>,
    repl_completed: Family<Labels, Gauge>,
    /// Seconds from the upload of a version to its replica, per destination.
    pub lag: Family<Labels, Histogram>,
    /// Bytes copied to each destination by this process.
    pub bytes: Family<Labels, Counter>,
    read_bytes: Family<Labels, Gauge>,
    region_rtt: Family<Labels, FGauge>,
    region_up: Family<Labels, Gauge>,
    regions: Option<Arc<crate::regions::Regions>>,
}

fn region(r: &str) -> Labels {
    vec![("region".to_string(), r.to_string())]
}

fn dest(d: &str) -> Labels {
    vec![("destination".to_string(), d.to_string())]
}

impl Metrics {
    /// Serves what `replication` measures, and `regions`' reads and probes.
    pub fn new(
        replication: &crate::replicator::Observed,
        regions: Option<Arc<crate::regions::Regions>>,
    ) -> Arc<Metrics> {
        let mut r = Registry::with_prefix("regionfs");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            uploads_pending: Gauge::default(),
            uploads_pending_bytes: Gauge::default(),
            uploads_failed: Gauge::default(),
            uploads_oldest: FGauge::default(),
            local_disk_failed: Gauge::default(),
            repl_pending: Family::default(),
            repl_pending_bytes: Family::default(),
            repl_failed: Family::default(),
            repl_oldest: Family::default(),
            repl_missed: Family::default(),
            repl_completed: Family::default(),
            lag: replication.lag.clone(),
            bytes: replication.bytes.clone(),
            read_bytes: Family::default(),
            region_rtt: Family::default(),
            region_up: Family::default(),
            regions,
        };
        r.register(
            "uploads_pending",
            "Operations waiting to reach the source bucket",
            m.uploads_pending.clone(),
        );
        r.register(
            "uploads_pending_bytes",
            "Bytes waiting to reach the source bucket",
            m.uploads_pending_bytes.clone(),
        );
        r.register(
            "uploads_failed",
            "Uploads failed permanently (retried every minute)",
            m.uploads_failed.clone(),
        );
        r.register(
            "uploads_oldest_pending_seconds",
            "Age of the oldest pending upload",
            m.uploads_oldest.clone(),
        );
        r.register(
            "local_disk_failed",
            "1 once a write or fsync of the cache or journal failed: the mount accepts no writes until remounted",
            m.local_disk_failed.clone(),
        );
        r.register(
            "replication_pending",
            "Versions waiting to be replicated",
            m.repl_pending.clone(),
        );
        r.register(
            "replication_pending_bytes",
            "Bytes waiting to be replicated",
            m.repl_pending_bytes.clone(),
        );
        r.register(
            "replication_failed",
            "Replications FAILED (retried every 30 s)",
            m.repl_failed.clone(),
        );
        r.register(
            "replication_oldest_pending_seconds",
            "Age of the oldest pending replication",
            m.repl_oldest.clone(),
        );
        r.register(
            "replication_missed_target",
            "Versions that missed replication.time_target",
            m.repl_missed.clone(),
        );
        r.register(
            "replication_completed",
            "Versions replicated (journal total)",
            m.repl_completed.clone(),
        );
        r.register(
            "replication_lag_seconds",
            "From the upload of a version to its replica",
            m.lag.clone(),
        );
        r.register(
            "replication_bytes",
            "Bytes copied to each destination by this process",
            m.bytes.clone(),
        );
        r.register(
            "read_bytes",
            "Bytes this process read from each region (source and replicas)",
            m.read_bytes.clone(),
        );
        r.register(
            "region_rtt_seconds",
            "Smoothed round trip of each region's probe",
            m.region_rtt.clone(),
        );
        r.register(
            "region_reachable",
            "1 while the region answers its probes",
            m.region_up.clone(),
        );
        *m.registry.lock().unwrap() = r;
        Arc::new(m)
    }

    /// Reads the backlog from the journal and renders every metric.
    pub async fn render(
        &self,
        journal: &Journal,
        config: &Config,
    ) -> Result<String, crate::journal::JournalError> {
        let status = crate::status::status(journal, config).await?;
        let u = &status.uploads;
        self.uploads_pending.set(u.pending as i64);
        self.uploads_pending_bytes.set(u.pending_bytes as i64);
        self.uploads_failed.set(u.failed as i64);
        self.uploads_oldest.set(u.oldest_pending_s);
        self.local_disk_failed
            .set(status.local_disk_failed.is_some() as i64);
        for (d, s) in &status.replication {
            self.repl_pending
                .get_or_create(&dest(d))
                .set(s.pending as i64);
            self.repl_pending_bytes
                .get_or_create(&dest(d))
                .set(s.pending_bytes as i64);
            self.repl_failed
                .get_or_create(&dest(d))
                .set(s.failed as i64);
            self.repl_oldest
                .get_or_create(&dest(d))
                .set(s.oldest_pending_s);
            self.repl_missed
                .get_or_create(&dest(d))
                .set(s.missed_target as i64);
            self.repl_completed
                .get_or_create(&dest(d))
                .set(s.completed as i64);
        }
        if let Some(regions) = &self.regions {
            for (name, st) in regions.snapshot() {
                self.read_bytes
                    .get_or_create(&region(&name))
                    .set(st.read_bytes as i64);
                if let Some(ms) = st.rtt_ms {
                    self.region_rtt
                        .get_or_create(&region(&name))
                        .set(ms / 1000.0);
                }
                self.region_up
                    .get_or_create(&region(&name))
                    .set(i64::from(st.reachable));
            }
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().unwrap());
        Ok(out)
    }

    /// Reports the mount's own counters: bytes read() served to the kernel,
    /// HEADs sent for attributes, inodes kept, and opens the kernel serves
    /// by passthrough.
    pub fn set_fs_counters(
        &self,
        served: Counter,
        attribute_heads: Counter,
        inodes: Gauge,
        passthrough_opens: Counter,
    ) {
        let mut r = self.registry.lock().unwrap();
        r.register(
            "fuse_read_bytes",
            "Bytes read() served to the kernel (its page cache hits never reach the daemon)",
            served,
        );
        r.register(
            "attribute_heads",
            "HEAD requests sent to the source for attributes (lookups, stat, after a listing)",
            attribute_heads,
        );
        r.register(
            "inodes",
            "Inodes the mount keeps in memory (idle clean files beyond mount.max_inodes are let go)",
            inodes,
        );
        r.register(
            "passthrough_opens",
            "Opens the kernel serves from a cache file directly (FUSE passthrough: their reads and writes never reach the daemon)",
            passthrough_opens,
        );
    }
}

/// Serves `GET /metrics` (any path) until the process ends.
pub async fn serve(
    listen: String,
    metrics: Arc<Metrics>,
    journal: Journal,
    config: Config,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!(%listen, "metrics endpoint listening");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let (metrics, journal, config) = (metrics.clone(), journal.clone(), config.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let (status, body) = match metrics.render(&journal, &config).await {
                Ok(b) => ("200 OK", b),
                Err(e) => ("500 Internal Server Error", format!("journal: {e}\n")),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

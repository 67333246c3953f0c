//! Measures how fast the source bucket answers HEADs, the floor of a cold
//! `ls -l` (one HEAD per file for mode, owner and mtime).
//!
//!   cargo run --release --example head_rate -- CONFIG PREFIX
//!
//! Lists every key under PREFIX in the source bucket of CONFIG, then HEADs
//! them all with 1, 8, 16, 32 and 64 requests in flight and prints the times.

use std::sync::Arc;
use std::time::Instant;

use regionfs::config::Config;
use regionfs::store::s3::S3Store;
use regionfs::store::ObjectStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(config), Some(prefix)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: head_rate CONFIG PREFIX");
        std::process::exit(2);
    };
    let cfg = Config::load(std::path::Path::new(config))?;
    let store = Arc::new(S3Store::connect(&cfg.source).await);
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = store.list(prefix, None, token, None).await?;
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    println!("{} keys under {prefix:?}", keys.len());
    for in_flight in [1usize, 8, 16, 32, 64] {
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for key in &keys {
            if set.len() >= in_flight {
                set.join_next().await;
            }
            let (store, key) = (store.clone(), key.clone());
            set.spawn(async move { store.head(&key, None).await.map(|_| ()) });
        }
        let mut failed = 0;
        while let Some(r) = set.join_next().await {
            failed += usize::from(!matches!(r, Ok(Ok(()))));
        }
        println!(
            "{in_flight:>3} in flight: {} HEADs in {:.3} s ({failed} failed)",
            keys.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

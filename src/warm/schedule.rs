//! `[[warm]]`: the server keeps image lists warm. Each entry runs when the
//! server starts and then every `interval`: its list file is read again
//! (a GitOps job may rewrite it), every image is warmed through this
//! process's registry API (verified, coalesced with live pulls, counted in
//! the metrics; no socket, no credentials), tags older than `tag_ttl` are
//! revalidated with a HEAD and new digests fetched before any node asks.
//! With `pin = true` warmed images are pinned (eviction keeps them), and
//! an image that leaves the list is unpinned.

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::{Config, WarmConfig};
use crate::registry::Registry;
use crate::store::Store;
use crate::warm::{ImageRef, Options, Quiet, Report, Warmer};

/// What one run of an entry did.
#[derive(Debug, Default)]
pub struct Run {
    /// The warm report (images that could be read from the inputs).
    pub report: Report,
    /// Input errors (the file could not be read or parsed).
    pub input_errors: Vec<String>,
    /// Images pinned by this run, and unpinned (they left the list).
    pub pinned: usize,
    /// Images unpinned.
    pub unpinned: usize,
}

/// The name pins of entry `index` carry.
fn source(index: usize) -> String {
    format!("warm[{index}]")
}

/// Starts the schedule of `[[warm]]` entry `w` (at `index`): a run now,
/// then one every `interval`, each with the config `config` holds then (a
/// reload may have changed the upstreams its images name). Abort the task
/// to stop it.
pub fn spawn_one(
    index: usize,
    w: WarmConfig,
    registry: Arc<Registry>,
    store: Store,
    config: Arc<arc_swap::ArcSwap<Config>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(w.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            run_once(
                index,
                w.clone(),
                registry.clone(),
                store.clone(),
                config.load_full(),
            )
            .await;
        }
    })
}

/// One run of entry `index`; logs its outcome.
pub async fn run_once(
    index: usize,
    w: WarmConfig,
    registry: Arc<Registry>,
    store: Store,
    config: Arc<Config>,
) -> Run {
    let mut run = Run::default();
    let mut images: Vec<ImageRef> = Vec::new();
    let mut listings = Vec::new();
    for s in &w.images {
        match s.parse::<ImageRef>() {
            Ok(r) => images.push(r),
            Err(e) => run.input_errors.push(e.to_string()),
        }
    }
    if let Some(f) = &w.file {
        match std::fs::read_to_string(f) {
            Ok(text) => match crate::warm::read_input(f, &text) {
                Ok((refs, lists)) => {
                    images.extend(refs);
                    listings.extend(lists);
                }
                Err(errs) => run
                    .input_errors
                    .extend(errs.into_iter().map(|e| e.to_string())),
            },
            Err(e) => run
                .input_errors
                .push(format!("cannot read {}: {e}", f.display())),
        }
    }
    let warmer = Warmer::in_process(
        registry,
        Options {
            mirror: "http://in-process/".parse().expect("a valid URL"),
            ca_pem: None,
            basic: None,
            platforms: w.platforms.clone(),
            concurrency: w.concurrency,
        },
    );
    for l in &listings {
        match warmer.list_tags(l).await {
            Ok(refs) => images.extend(refs),
            Err(e) => run.input_errors.push(e),
        }
    }
    let mut seen = HashSet::new();
    images.retain(|r| seen.insert(r.to_string()));
    run.report = warmer.warm_all(&images, &Quiet).await;
    let r = &run.report;
    for e in &run.input_errors {
        tracing::error!(entry = index, error = %e, "warm list");
    }
    for i in r.images.iter().filter(|i| !i.ok()) {
        tracing::warn!(entry = index, image = %i.image, error = %i.errors.join("; "), "warming failed");
    }
    if w.pin {
        pin(index, &images, &mut run, &store, &config).await;
    }
    tracing::info!(
        entry = index,
        ok = run.report.ok,
        failed = run.report.failed,
        bytes_fetched = run.report.bytes_fetched,
        bytes_cached = run.report.bytes_cached,
        pinned = run.pinned,
        unpinned = run.unpinned,
        seconds = run.report.seconds,
        "warmed"
    );
    run
}

/// Pins the images of this run that were warmed; unpins those of this
/// entry that are no longer on its list. An image that failed this time
/// stays pinned (its last good copy is what the pin keeps).
async fn pin(index: usize, images: &[ImageRef], run: &mut Run, store: &Store, config: &Config) {
    let me = source(index);
    let failed = |e: &crate::store::Error, what: &str| {
        tracing::error!(entry = index, error = %crate::error_chain(e), "cannot {what}");
    };
    let existing = match store.pins().await {
        Ok(p) => p,
        Err(e) => return failed(&e, "read the pins"),
    };
    let mut listed = HashSet::new();
    for r in images {
        let Ok(key) = r.store_key(config) else {
            continue;
        };
        listed.insert(key.clone());
        let ok = run
            .report
            .images
            .iter()
            .any(|i| i.ok() && i.image == r.to_string());
        let have = existing.iter().any(|(k, _)| *k == key);
        if ok && !have {
            match store.pin(&key, &r.to_string(), Some(&me)).await {
                Ok(()) => run.pinned += 1,
                Err(e) => failed(&e, "pin"),
            }
        }
    }
    for (k, rec) in &existing {
        if rec.source.as_deref() == Some(me.as_str()) && !listed.contains(k) {
            match store.unpin(k).await {
                Ok(_) => run.unpinned += 1,
                Err(e) => failed(&e, "unpin"),
            }
        }
    }
}

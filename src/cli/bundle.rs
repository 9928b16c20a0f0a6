//! `mirrorgate export` and `mirrorgate import`: the commands' front over
//! [`crate::bundle`].

use std::path::PathBuf;

use anyhow::Context as _;

use super::warm::{InputArgs, MirrorArgs, MirrorPlan, read_inputs};

/// `mirrorgate export`
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// The bundle to write: a `.tar` file (an OCI archive), or else a
    /// directory (an OCI image layout). It must not exist.
    #[arg(long)]
    pub out: PathBuf,
    /// An earlier bundle: blobs it holds are left out of this one (import
    /// that one first).
    #[arg(long)]
    pub since: Option<PathBuf>,
    /// Blob downloads at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `mirrorgate import`
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Bundles (`.tar` files or OCI layout directories), imported in order.
    #[arg(required = true)]
    pub bundles: Vec<PathBuf>,
    #[command(flatten)]
    pub store: super::cache::StoreArgs,
}

fn size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// Runs `mirrorgate export`: exit status 1 when an image was left out.
pub(super) fn export(a: ExportArgs) -> anyhow::Result<()> {
    let (mut images, listings) = read_inputs(&a.input)?;
    let plan = MirrorPlan::new(&a.mirror)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let concurrency = usize::from(a.concurrency);
    let report = rt.block_on(async {
        let (warmer, local) = plan.connect(Vec::new(), concurrency).await?;
        for l in &listings {
            images.extend(warmer.list_tags(l).await.map_err(anyhow::Error::msg)?);
        }
        let r = crate::bundle::export(&warmer, &images, &a.out, a.since.as_deref()).await;
        if let Some(l) = local {
            l.finish().await;
        }
        r.with_context(|| format!("cannot write {}", a.out.display()))
    })?;
    for i in &report.images {
        if i.errors.is_empty() {
            println!(
                "ok   {} {}: {} blobs, {} written ({})",
                i.image,
                i.digest.as_deref().unwrap_or_default(),
                i.blobs,
                i.written,
                size(i.bytes_written)
            );
        } else {
            println!("FAIL {}: {}", i.image, i.errors.join("; "));
        }
    }
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!(
        "exported {} of {} images to {}: {} blobs ({}), {} left out as in --since",
        report.ok,
        report.ok + report.failed,
        report.bundle,
        report.blobs_written,
        size(report.bytes_written),
        report.blobs_in_base
    );
    if report.failed > 0 {
        anyhow::bail!("{} image(s) are not in the bundle", report.failed);
    }
    Ok(())
}

/// Runs `mirrorgate import`: exit status 1 when a blob was refused or an
/// image not imported.
pub(super) fn import(a: ImportArgs) -> anyhow::Result<()> {
    let config = super::cache::store_config(a.store.config.as_ref(), a.store.data_dir.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reports = rt.block_on(async {
        let store = crate::store::Store::from_config_beside_server(&config)
            .await
            .with_context(|| {
                format!("cannot open the store in {}", config.storage_root.display())
            })?;
        let mut out = Vec::new();
        for b in &a.bundles {
            let r = crate::bundle::import(&store, &config, b)
                .await
                .with_context(|| format!("cannot import {}", b.display()))?;
            out.push(r);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let mut bad = 0;
    for r in &reports {
        bad += r.failed + r.refused.len();
        if a.store.json {
            continue;
        }
        for (d, why) in &r.refused {
            println!("REFUSED blob {d}: {why}");
        }
        for i in &r.images {
            if i.errors.is_empty() {
                let missing = if i.missing_platforms > 0 {
                    format!(" ({} platforms not in the bundle)", i.missing_platforms)
                } else {
                    String::new()
                };
                println!("ok   {} {}{missing}", i.image, i.digest);
            } else {
                println!("FAIL {}: {}", i.image, i.errors.join("; "));
            }
        }
        println!(
            "imported {} of {} images from {}: {} blobs stored ({}), {} already stored, {} refused",
            r.ok,
            r.ok + r.failed,
            r.bundle,
            r.blobs_imported,
            size(r.bytes_imported),
            r.blobs_present,
            r.refused.len()
        );
    }
    if a.store.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    if bad > 0 {
        anyhow::bail!("{bad} blob(s) refused or image(s) not imported");
    }
    Ok(())
}

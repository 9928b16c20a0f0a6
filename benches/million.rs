//! The local store at scale: a million stored blobs.
//!
//! Creates `MILLION_BLOBS` (default 1,000,000) small blobs as files in a
//! store root, lets the store build its index from them, then measures:
//! - `mirrorgate serve` (the release binary) from spawn to its ready line,
//!   and its RSS once idle, over three starts;
//! - one eviction pass that evicts 1% of the blobs, next to a plain walk
//!   that `stat`s every blob (what each pass cost before the index).
//!
//! Run: `cargo build --release && cargo bench --bench million` (about 4 GiB
//! of disk for a million blobs, in a temporary directory under `target/`).
//! Set `MIRRORGATE_BIN` to time another binary. CI only compiles it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirrorgate::oci::Digest;
use mirrorgate::store::LocalBlobs;

fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    root.join("blobs/sha256").join(&d.hex()[..2]).join(d.hex())
}

/// Writes `n` distinct blobs of 100 to 400 bytes straight into the tree
/// (the shape the store writes; no fsync, this is set-up).
fn create(root: &Path, n: u64) -> u64 {
    for i in 0..256 {
        std::fs::create_dir_all(root.join(format!("blobs/sha256/{i:02x}"))).unwrap();
    }
    let threads = 4;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let root = root.to_owned();
            std::thread::spawn(move || {
                let mut bytes = 0u64;
                let mut i = t;
                while i < n {
                    let len = 100 + (i % 301) as usize;
                    let data: Vec<u8> = format!("blob {i} ").bytes().cycle().take(len).collect();
                    let d = Digest::sha256_of(&data);
                    std::fs::write(blob_path(&root, &d), &data).unwrap();
                    bytes += len as u64;
                    i += threads;
                }
                bytes
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Counts the blob files the way every eviction pass used to: a walk that
/// `stat`s each one.
fn walk(root: &Path) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    let mut stack = vec![root.join("blobs")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
                bytes += m.len();
            }
        }
    }
    (n, bytes)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Starts the server on `root`; returns (time to its ready line, idle RSS
/// in KiB two seconds later).
fn serve_once(bin: &Path, root: &Path, max: u64) -> (Duration, u64) {
    let cfg = root.parent().unwrap().join("million.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nroot = {:?}\nmax_size = \"{max}B\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\ndefault = true\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mirrorgate (build it: cargo build --release)");
    let err = child.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    let ready = loop {
        let line = lines.next().expect("ready line").unwrap();
        if line.contains("mirrorgate ready") {
            break started.elapsed();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    // Idle is a span of time: this is the measurement, not a wait for an
    // event.
    #[expect(
        clippy::disallowed_methods,
        reason = "idle RSS is read after an idle span"
    )]
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_kib(child.id());
    // SIGTERM: an orderly stop closes the index cleanly.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    (ready, rss)
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::var("MILLION_BLOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = tmp.path().join("data");
    let bin = std::env::var_os("MIRRORGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/mirrorgate"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let t = Instant::now();
    let bytes = create(&root, n);
    println!("created {n} blobs ({bytes} bytes) in {:.1?}", t.elapsed());
    // First open: no index yet, so it is built from the files.
    let t = Instant::now();
    let index_build = rt.block_on(async {
        let s = LocalBlobs::open(&root, Some(u64::MAX / 2)).await.unwrap();
        s.evict_once().await.unwrap();
        assert_eq!(s.stored_bytes(), bytes);
        t.elapsed()
    });
    println!("index built from the files in {index_build:.1?}");

    let t = Instant::now();
    let (files, walked) = walk(&root);
    let walk_time = t.elapsed();
    assert_eq!(walked, bytes);

    let mut readies = Vec::new();
    let mut rsses = Vec::new();
    for _ in 0..3 {
        let (ready, rss) = serve_once(&bin, &root, bytes * 2);
        readies.push(ready);
        rsses.push(rss);
    }

    // Two passes, each with the bound 1% under what is stored: each evicts
    // down to 90% of the bound (about a tenth of the blobs), the second
    // from a store that is 11% smaller.
    let passes: Vec<(Duration, usize, u64)> = rt.block_on(async {
        let mut out = Vec::new();
        let mut stored = bytes;
        for _ in 0..2 {
            let s = LocalBlobs::open(&root, Some(stored / 100 * 99))
                .await
                .unwrap();
            let t = Instant::now();
            let r = s.evict_once().await.unwrap();
            out.push((t.elapsed(), r.evicted, r.before));
            stored = r.after;
        }
        out
    });

    // The floor of a pass: unlinking as many blob files with nothing else.
    let mut doomed = Vec::new();
    let want = passes.last().map_or(0, |p| p.1);
    let mut stack = vec![root.join("blobs")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if doomed.len() < want {
                doomed.push(p);
            }
        }
    }
    let t = Instant::now();
    for p in &doomed {
        std::fs::remove_file(p).unwrap();
    }
    let unlink_time = t.elapsed();

    println!();
    println!("| {files} blobs ({bytes} bytes) | figure |");
    println!("|---|---|");
    println!(
        "| `serve` to ready (median of 3) | {:.0?} (runs: {:?}) |",
        median(readies.clone()),
        readies
    );
    println!(
        "| idle RSS after ready (median of 3) | {:.1} MiB (runs: {:?} KiB) |",
        median(rsses.clone()) as f64 / 1024.0,
        rsses
    );
    for (t, evicted, before) in &passes {
        println!(
            "| one eviction pass over {before} bytes, {evicted} blobs evicted | {t:.2?} ({:.1} µs per evicted blob) |",
            t.as_secs_f64() * 1e6 / (*evicted).max(1) as f64
        );
    }
    println!(
        "| unlinking {} blob files, nothing else (a pass's floor) | {unlink_time:.2?} ({:.1} µs per file) |",
        doomed.len(),
        unlink_time.as_secs_f64() * 1e6 / doomed.len().max(1) as f64
    );
    println!("| a walk that stats every blob (each pass before the index) | {walk_time:.0?} |");
    println!("| building the index from the files (once, in the background) | {index_build:.0?} |");
}

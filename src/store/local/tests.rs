//! The local store: the backend contract, and what only a directory does
//! (sweeping `tmp/` at start, quarantining stray files, paths under root).

use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;

use crate::oci::Digest;
use crate::store::contract::{self, Fixture};
use crate::store::{Scope, Store};

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.0
            .path()
            .join("blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
    }
}

fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

impl Fixture for Dir {
    fn open(&self) -> BoxFuture<'_, Store> {
        Box::pin(async { Store::open_local(self.0.path(), None).await.unwrap() })
    }

    fn corrupt<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let path = self.blob(digest);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        })
    }

    fn leftovers(&self) -> BoxFuture<'_, usize> {
        Box::pin(async { files_under(&self.0.path().join("tmp")).len() })
    }
}

#[tokio::test]
async fn local_store_passes_the_contract() {
    let dir = Dir::new();
    contract::run(&dir, "local").await;
}

#[tokio::test]
async fn blobs_are_files_under_the_root_and_restart_sweeps_tmp() {
    let dir = Dir::new();
    let s = dir.open().await;
    let data = b"hello blob".to_vec();
    let d = Digest::sha256_of(&data);
    let mut w = s.writer(&d, Scope::Durable).await.unwrap();
    w.write(&data).unwrap();
    w.finish(None).await.unwrap();
    assert_eq!(std::fs::read(dir.blob(&d)).unwrap(), data);
    // A crash leaves a temporary file behind; the next open sweeps it.
    let tmp = dir.0.path().join("tmp");
    std::fs::write(tmp.join("leftover.1.2"), b"partial").unwrap();
    let _again = dir.open().await;
    assert!(files_under(&tmp).is_empty());
}

#[tokio::test]
async fn verify_quarantines_stray_files_too() {
    let dir = Dir::new();
    let s = dir.open().await;
    for data in [&b"one"[..], b"two", b"three"] {
        let mut w = s
            .writer(&Digest::sha256_of(data), Scope::Durable)
            .await
            .unwrap();
        w.write(data).unwrap();
        w.finish(None).await.unwrap();
    }
    let r = s.verify().await.unwrap();
    assert_eq!((r.ok, r.bytes, r.quarantined.len()), (3, 11, 0));
    let bad = dir.blob(&Digest::sha256_of(b"two"));
    std::fs::write(&bad, b"tw0").unwrap();
    std::fs::write(bad.with_file_name("not-a-digest"), b"x").unwrap();
    let r = s.verify().await.unwrap();
    assert_eq!((r.ok, r.quarantined.len()), (2, 2));
    let quarantine = dir.0.path().join("quarantine");
    assert!(
        r.quarantined
            .iter()
            .all(|p| Path::new(p).starts_with(&quarantine))
    );
    assert_eq!(s.verify().await.unwrap().quarantined.len(), 0);
}

async fn put(s: &super::LocalBlobs, data: &[u8]) -> Digest {
    use crate::store::Backend;
    let d = Digest::sha256_of(data);
    let mut w = s.create(&d, Scope::Durable).await.unwrap();
    w.write(data).unwrap();
    w.finish(None).await.unwrap();
    d
}

/// Makes `d` look accessed `age_s` seconds ago, as an index rebuild reads it.
fn age(dir: &Dir, d: &Digest, age_s: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(dir.blob(d))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_s))
        .unwrap();
}

#[tokio::test]
async fn eviction_takes_the_oldest_down_to_the_low_watermark_and_skips_in_use() {
    let dir = Dir::new();
    let blobs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 400_000]).collect();
    {
        let s = super::LocalBlobs::open(dir.0.path(), None).await.unwrap();
        for b in &blobs {
            put(&s, b).await;
        }
        // Closed for real at the end of the block (nothing else holds it).
        s.settle_index().await;
    }
    let ds: Vec<Digest> = blobs.iter().map(|b| Digest::sha256_of(b)).collect();
    // Ages 10, 50, 30 and 5 s; the index is rebuilt from them.
    for (d, a) in ds.iter().zip([10, 50, 30, 5]) {
        age(&dir, d, a);
    }
    std::fs::remove_file(dir.0.path().join("index.redb")).unwrap();
    // 1.6 MB stored, 1.5 MB allowed: down to 1.35 MB -> one blob goes, the
    // oldest (1); it is being served, so the next oldest (2) goes instead.
    let s = super::LocalBlobs::open(dir.0.path(), Some(1_500_000))
        .await
        .unwrap();
    let busy = s.hold(&ds[1]);
    let r = s.evict_once().await.unwrap();
    assert_eq!((r.before, r.after, r.evicted), (1_600_000, 1_200_000, 1));
    assert!(!dir.blob(&ds[2]).exists() && dir.blob(&ds[1]).exists());
    assert_eq!(s.stored_bytes(), 1_200_000);
    drop(busy);
    // Under the high watermark: nothing to do.
    assert_eq!(s.evict_once().await.unwrap().evicted, 0);
}

#[tokio::test]
async fn the_index_survives_a_restart_and_is_rebuilt_when_lost() {
    let dir = Dir::new();
    {
        let s = super::LocalBlobs::open(dir.0.path(), None).await.unwrap();
        put(&s, b"first blob").await;
        put(&s, b"second").await;
        assert_eq!(s.stored_bytes(), 16);
        s.settle_index().await;
    }
    // A clean restart reads the size from the index, not from a walk: a
    // file slipped in behind the store's back is not counted...
    let stray = Digest::sha256_of(b"stray");
    std::fs::create_dir_all(dir.blob(&stray).parent().unwrap()).unwrap();
    std::fs::write(dir.blob(&stray), b"stray").unwrap();
    {
        let s = super::LocalBlobs::open(dir.0.path(), Some(1 << 20))
            .await
            .unwrap();
        assert_eq!(s.stored_bytes(), 16);
        s.evict_once().await.unwrap();
        assert_eq!(s.stored_bytes(), 16);
        s.settle_index().await;
    }
    // ...until the index is lost (a crash, or an older store): then it is
    // rebuilt from the files, in the background, before eviction reads it.
    std::fs::remove_file(dir.0.path().join("index.redb")).unwrap();
    let s = super::LocalBlobs::open(dir.0.path(), Some(1 << 20))
        .await
        .unwrap();
    s.evict_once().await.unwrap();
    assert_eq!(s.stored_bytes(), 21);
    // Deletes and quarantines leave the index too.
    use crate::store::Backend;
    s.delete(&stray).await.unwrap();
    s.evict_once().await.unwrap();
    assert_eq!(s.stored_bytes(), 16);
}

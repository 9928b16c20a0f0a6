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

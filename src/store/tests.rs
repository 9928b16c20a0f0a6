//! Contract tests for the store, against a real directory.

use super::*;
use crate::config::Config;
use crate::oci::{AcceptClass, RepoName, Tag};

fn digest(b: &[u8]) -> Digest {
    Digest::sha256_of(b)
}

async fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path()).await.unwrap();
    (dir, s)
}

fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
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

#[tokio::test]
async fn write_verify_commit() {
    let (_d, s) = store().await;
    let data = b"hello blob".to_vec();
    let dg = digest(&data);
    assert_eq!(s.stat(&dg).await.unwrap(), None);
    let mut w = s.writer(&dg).await.unwrap();
    w.write(&data[..5]).unwrap();
    // Readers of the temporary file see bytes as soon as write returns.
    let r = w.open_reader().unwrap();
    let mut buf = [0u8; 5];
    std::os::unix::fs::FileExt::read_exact_at(&r, &mut buf, 0).unwrap();
    assert_eq!(&buf, b"hello");
    w.write(&data[5..]).unwrap();
    assert_eq!(
        w.finish(Some(data.len() as u64)).unwrap(),
        data.len() as u64
    );
    assert_eq!(s.stat(&dg).await.unwrap(), Some(data.len() as u64));
    let path = s.layout().blob(&dg);
    assert!(path.starts_with(s.layout().root().join("blobs/sha256")));
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert!(files_under(&s.layout().tmp_dir()).is_empty());
}

#[tokio::test]
async fn verified_but_uncommitted_is_not_stored() {
    let (_d, s) = store().await;
    let data = b"verified first".to_vec();
    let dg = digest(&data);
    let mut w = s.writer(&dg).await.unwrap();
    w.write(&data).unwrap();
    let r = w.open_reader().unwrap();
    assert_eq!(
        w.verify(Some(data.len() as u64)).unwrap(),
        data.len() as u64
    );
    // Verified, not yet committed: not in the store, no more writes.
    assert_eq!(s.stat(&dg).await.unwrap(), None);
    assert!(w.write(b"x").is_err());
    w.commit().unwrap();
    assert_eq!(s.stat(&dg).await.unwrap(), Some(data.len() as u64));
    // The reader opened on the temporary file still reads the whole blob.
    let mut buf = vec![0u8; data.len()];
    std::os::unix::fs::FileExt::read_exact_at(&r, &mut buf, 0).unwrap();
    assert_eq!(buf, data);
    assert!(files_under(&s.layout().tmp_dir()).is_empty());

    // A writer that fails verification can never be committed.
    let dg2 = digest(b"other");
    let mut w = s.writer(&dg2).await.unwrap();
    w.write(b"not other").unwrap();
    assert!(w.verify(None).is_err());
    assert!(w.commit().is_err());
    drop(w);
    assert_eq!(s.stat(&dg2).await.unwrap(), None);
    assert!(files_under(&s.layout().tmp_dir()).is_empty());
}

#[tokio::test]
async fn mismatches_store_nothing() {
    let (_d, s) = store().await;
    let dg = digest(b"right");
    let mut w = s.writer(&dg).await.unwrap();
    w.write(b"wrong").unwrap();
    assert!(matches!(w.finish(None), Err(Error::DigestMismatch { .. })));
    drop(w);
    let mut w = s.writer(&dg).await.unwrap();
    w.write(b"right").unwrap();
    assert!(matches!(
        w.finish(Some(99)),
        Err(Error::SizeMismatch {
            expected: 99,
            actual: 5
        })
    ));
    drop(w);
    assert_eq!(s.stat(&dg).await.unwrap(), None);
    assert!(files_under(&s.layout().root().join("blobs")).is_empty());
    assert!(files_under(&s.layout().tmp_dir()).is_empty());
}

#[tokio::test]
async fn dropped_writer_leaves_nothing_and_restart_sweeps() {
    let (d, s) = store().await;
    let dg = digest(b"abc");
    let mut w = s.writer(&dg).await.unwrap();
    w.write(b"ab").unwrap();
    drop(w);
    assert!(files_under(&s.layout().tmp_dir()).is_empty());
    // A crash leaves a temporary file behind; the next open sweeps it.
    std::fs::write(s.layout().tmp_dir().join("leftover.1.2"), b"partial").unwrap();
    let s2 = BlobStore::open(d.path()).await.unwrap();
    assert!(files_under(&s2.layout().tmp_dir()).is_empty());
    assert_eq!(s2.stat(&dg).await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_writers_of_one_digest() {
    let (_d, s) = store().await;
    let data = vec![7u8; 100_000];
    let dg = digest(&data);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (s, dg, data) = (s.clone(), dg.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let mut w = s.writer(&dg).await.unwrap();
            tokio::task::spawn_blocking(move || {
                for c in data.chunks(1000) {
                    w.write(c).unwrap();
                }
                w.finish(Some(data.len() as u64)).unwrap()
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 100_000);
    }
    assert_eq!(std::fs::read(s.layout().blob(&dg)).unwrap(), data);
}

#[tokio::test]
async fn manifests_and_tags_roundtrip() {
    let (d, s) = store().await;
    let m = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let dg = digest(&m);
    let mt = MediaType::new(crate::oci::media_type::OCI_MANIFEST);
    s.put_manifest(&dg, m.clone(), &mt).await.unwrap();
    let (bytes, rec) = s.manifest(&dg).await.unwrap().unwrap();
    assert_eq!(bytes, m);
    assert_eq!(rec.media_type, mt.as_str());
    // Wrong bytes are refused.
    assert!(s.put_manifest(&digest(b"x"), m.clone(), &mt).await.is_err());

    let c = Config::embedded_default().unwrap();
    let key = TagKey {
        upstream: c.upstreams[0].id.clone(),
        repo: "library/alpine".parse::<RepoName>().unwrap(),
        tag: "3.19".parse::<Tag>().unwrap(),
        class: AcceptClass::all_modern(),
    };
    assert_eq!(s.tag(&key).await.unwrap(), None);
    let rec = TagRecord {
        digest: dg.clone(),
        media_type: mt.as_str().into(),
        size: m.len() as u64,
        checked_at_ms: 42,
    };
    s.put_tag(&key, &rec).await.unwrap();
    // Survives reopening (a restart).
    let s2 = BlobStore::open(d.path()).await.unwrap();
    assert_eq!(s2.tag(&key).await.unwrap(), Some(rec));
    assert_eq!(s2.manifest(&dg).await.unwrap().unwrap().0, m);
    assert_eq!(
        s2.repos(&key.upstream).await.unwrap(),
        vec!["library/alpine".to_owned()]
    );
    s2.remove_tag(&key).await.unwrap();
    assert_eq!(s2.tag(&key).await.unwrap(), None);
}

#[tokio::test]
async fn verify_quarantines_what_fails_its_digest() {
    let (_d, s) = store().await;
    for data in [&b"one"[..], b"two", b"three"] {
        let mut w = s.writer(&digest(data)).await.unwrap();
        w.write(data).unwrap();
        w.finish(None).unwrap();
    }
    let r = s.verify().await.unwrap();
    assert_eq!((r.ok, r.bytes, r.quarantined.len()), (3, 11, 0));
    // Bit rot, and a stray file.
    let bad = s.layout().blob(&digest(b"two"));
    std::fs::write(&bad, b"tw0").unwrap();
    std::fs::write(bad.with_file_name("not-a-digest"), b"x").unwrap();
    let r = s.verify().await.unwrap();
    assert_eq!((r.ok, r.quarantined.len()), (2, 2));
    assert!(!bad.exists());
    assert_eq!(s.stat(&digest(b"two")).await.unwrap(), None);
    assert!(
        r.quarantined
            .iter()
            .all(|p| p.starts_with(s.layout().root().join("quarantine")))
    );
    assert_eq!(s.verify().await.unwrap().quarantined.len(), 0);
}

#[tokio::test]
async fn corrupted_manifest_on_disk_is_not_served() {
    let (_d, s) = store().await;
    let m = Bytes::from_static(b"{}");
    let dg = digest(&m);
    s.put_manifest(&dg, m, &MediaType::new("application/json"))
        .await
        .unwrap();
    std::fs::write(s.layout().blob(&dg), b"{x").unwrap();
    assert_eq!(s.manifest(&dg).await.unwrap(), None);
}

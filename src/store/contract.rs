//! The contract every store backend passes, written once and run against
//! each (the local directory in `local`'s tests, S3 in `tests/s3.rs`):
//! distribution's `testsuites.Driver` and spegel's `storetest.Conformance`
//! are the models. A backend is plugged in through a [`Fixture`], which can
//! also reach behind the store (to corrupt an object, or count what an
//! abandoned write left).
//!
//! Test code that ships in the library so that integration tests can run it;
//! it panics on the first broken promise.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use super::{Error, Scope, Store, TagKey, TagRecord};
use crate::config::UpstreamId;
use crate::oci::{AcceptClass, Digest, MediaType, RepoName, Tag};

/// A backend under test.
pub trait Fixture: Send + Sync {
    /// A store over the fixture's storage. Every call opens a new one over
    /// the same storage: a call after the first is a restart.
    fn open(&self) -> BoxFuture<'_, Store>;
    /// Changes a stored blob's bytes behind the store's back (bit rot).
    fn corrupt<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, ()>;
    /// How many unfinished writes the storage holds (temporary files,
    /// multipart uploads).
    fn leftovers(&self) -> BoxFuture<'_, usize>;
}

/// Runs every check against `fixture`. `tag` makes the content unique, so
/// that runs sharing a bucket do not see each other's blobs.
pub async fn run(fixture: &dyn Fixture, tag: &str) {
    let store = fixture.open().await;
    let c = Content {
        tag: tag.to_owned(),
    };
    write_read_and_ranges(&store, &c).await;
    verified_is_invisible_until_committed(&store, &c).await;
    mismatches_store_nothing(fixture, &store, &c).await;
    aborted_writes_leave_nothing(fixture, &store, &c).await;
    concurrent_writers_of_one_digest(&store, &c).await;
    large_blob_in_many_writes(&store, &c).await;
    pushed_uploads(fixture, &store, &c).await;
    delete(&store, &c).await;
    records(&store, &c).await;
    survives_a_restart(fixture, &c).await;
    corrupt_objects_are_refused(fixture, &c).await;
}

struct Content {
    tag: String,
}

impl Content {
    /// Bytes unique to this run and `name`, `len` long.
    fn bytes(&self, name: &str, len: usize) -> Bytes {
        let seed = format!("{}:{name}:", self.tag);
        let mut v: Vec<u8> = seed.bytes().cycle().take(len).collect();
        for (i, b) in v.iter_mut().enumerate() {
            *b = b.wrapping_add((i / 997) as u8);
        }
        Bytes::from(v)
    }
}

async fn write_all(store: &Store, data: &Bytes, chunk: usize) -> Result<u64, Error> {
    let d = Digest::sha256_of(data);
    let mut w = store.writer(&d, Scope::Durable).await?;
    let data = data.clone();
    let w = tokio::task::spawn_blocking(move || {
        for c in data.chunks(chunk.max(1)) {
            w.write(c)?;
        }
        Ok::<_, Error>(w)
    })
    .await
    .expect("write task")?;
    w.finish(None).await
}

async fn read_back(store: &Store, d: &Digest) -> Option<Bytes> {
    let r = store.open(d).await.expect("open")?;
    let mut s = r.into_stream(0, None);
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.extend_from_slice(&b.expect("read"));
    }
    Some(Bytes::from(out))
}

async fn write_read_and_ranges(store: &Store, c: &Content) {
    let data = c.bytes("roundtrip", 300_000);
    let d = Digest::sha256_of(&data);
    assert_eq!(store.stat(&d).await.unwrap(), None, "absent before");
    assert!(store.open(&d).await.unwrap().is_none(), "absent before");
    let mut w = store.writer(&d, Scope::Durable).await.unwrap();
    let spool = w.spool();
    w.write(&data[..100_000]).unwrap();
    // Followers read what is written so far, before the commit.
    assert_eq!(
        spool.read_at(10, 20).await.unwrap(),
        data.slice(10..30),
        "spool readable while written"
    );
    w.write(&data[100_000..]).unwrap();
    assert_eq!(w.finish(Some(data.len() as u64)).await.unwrap(), 300_000);
    assert_eq!(store.stat(&d).await.unwrap(), Some(300_000));
    assert_eq!(read_back(store, &d).await.unwrap(), data);
    let r = store.open(&d).await.unwrap().unwrap();
    assert_eq!(r.len(), 300_000);
    let mut s = r.into_stream(123_456, Some(200_001));
    let mut got = Vec::new();
    while let Some(b) = s.next().await {
        got.extend_from_slice(&b.unwrap());
    }
    assert_eq!(got, data[123_456..200_001], "a range from the middle");
    assert_eq!(
        r2_read_at(store, &d, 299_000, 5000).await,
        data.slice(299_000..),
        "read_at stops at the end"
    );
    // Spools stay readable after the commit.
    assert_eq!(
        spool.read_at(299_990, 100).await.unwrap(),
        data.slice(299_990..)
    );
}

async fn r2_read_at(store: &Store, d: &Digest, pos: u64, len: usize) -> Bytes {
    let r = store.open(d).await.unwrap().unwrap();
    r.read_at(pos, len).await.unwrap()
}

async fn verified_is_invisible_until_committed(store: &Store, c: &Content) {
    let data = c.bytes("verified-first", 5000);
    let d = Digest::sha256_of(&data);
    let mut w = store.writer(&d, Scope::Durable).await.unwrap();
    w.write(&data).unwrap();
    assert_eq!(w.verify(Some(5000)).unwrap(), 5000);
    assert_eq!(
        store.stat(&d).await.unwrap(),
        None,
        "verified, not committed"
    );
    assert!(w.write(b"x").is_err(), "no writes after verify");
    w.commit().await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), Some(5000));

    // A writer that fails verification can never be committed.
    let other = Digest::sha256_of(&c.bytes("never", 10));
    let mut w = store.writer(&other, Scope::Durable).await.unwrap();
    w.write(b"not it").unwrap();
    assert!(w.verify(None).is_err());
    assert!(w.commit().await.is_err());
    assert_eq!(store.stat(&other).await.unwrap(), None);
}

async fn mismatches_store_nothing(fixture: &dyn Fixture, store: &Store, c: &Content) {
    let right = c.bytes("right", 7000);
    let d = Digest::sha256_of(&right);
    let mut w = store.writer(&d, Scope::Durable).await.unwrap();
    w.write(&c.bytes("wrong", 7000)).unwrap();
    assert!(matches!(
        w.finish(None).await,
        Err(Error::DigestMismatch { .. })
    ));
    let mut w = store.writer(&d, Scope::Durable).await.unwrap();
    w.write(&right).unwrap();
    assert!(matches!(
        w.finish(Some(99)).await,
        Err(Error::SizeMismatch {
            expected: 99,
            actual: 7000
        })
    ));
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(store.open(&d).await.unwrap().is_none());
    assert_eq!(
        fixture.leftovers().await,
        0,
        "a refused write leaves nothing"
    );
}

async fn aborted_writes_leave_nothing(fixture: &dyn Fixture, store: &Store, c: &Content) {
    // Big enough that a remote backend has started uploading parts.
    let data = c.bytes("aborted", 12 << 20);
    let d = Digest::sha256_of(&data);
    let mut w = store.writer(&d, Scope::Durable).await.unwrap();
    let half = data.slice(..data.len() / 2);
    let w = tokio::task::spawn_blocking(move || {
        for part in half.chunks(1 << 20) {
            w.write(part).unwrap();
        }
        w
    })
    .await
    .unwrap();
    w.abort().await;
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert_eq!(
        fixture.leftovers().await,
        0,
        "an aborted write leaves nothing"
    );
    // Dropped without a word: invisible too.
    let mut w = store.writer(&d, Scope::Durable).await.unwrap();
    w.write(&data[..1000]).unwrap();
    drop(w);
    assert_eq!(store.stat(&d).await.unwrap(), None);
}

async fn concurrent_writers_of_one_digest(store: &Store, c: &Content) {
    let data = c.bytes("concurrent", 200_000);
    let d = Digest::sha256_of(&data);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (store, data) = (store.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            write_all(&store, &data, 1000 + i * 333).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200_000);
    }
    assert_eq!(read_back(store, &d).await.unwrap(), data);
}

async fn large_blob_in_many_writes(store: &Store, c: &Content) {
    // Larger than a multipart part, not a multiple of one.
    let data = c.bytes("large", (11 << 20) + 12_345);
    let d = Digest::sha256_of(&data);
    assert_eq!(
        write_all(store, &data, 256 * 1024).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(store.stat(&d).await.unwrap(), Some(data.len() as u64));
    let back = read_back(store, &d).await.unwrap();
    assert!(back == data, "large blob reads back identical");
}

/// A pushed upload's session becomes the blob (moved, not copied) only
/// when its bytes hash to the digest named; a wrong digest stores nothing
/// and leaves nothing behind.
async fn pushed_uploads(fixture: &dyn Fixture, store: &Store, c: &Content) {
    let data = c.bytes("pushed", 6 * 1024 * 1024 + 17);
    let d = Digest::sha256_of(&data);
    let up = store.uploads();
    let id = up.start("local", "app").await.unwrap();
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(1 << 20)
        .map(|b| Ok(Bytes::copy_from_slice(b)))
        .collect();
    up.append(&id, Some(0), futures_util::stream::iter(chunks), None)
        .await
        .unwrap();
    let done = store.commit_upload(&id, &d, None).await.unwrap();
    assert_eq!(done.size, data.len() as u64);
    assert!(!done.existed);
    assert_eq!(read_back(store, &d).await.as_ref(), Some(&data));
    // Again: the store holds it already, nothing is written.
    let id = up.start("local", "app").await.unwrap();
    let all = futures_util::stream::iter([Ok(data.clone())]);
    up.append(&id, None, all, None).await.unwrap();
    assert!(store.commit_upload(&id, &d, None).await.unwrap().existed);
    // A wrong digest: nothing stored, nothing left.
    let other = c.bytes("pushed-other", 4096);
    let id = up.start("local", "app").await.unwrap();
    let one = futures_util::stream::iter([Ok(other.clone())]);
    up.append(&id, None, one, None).await.unwrap();
    let wrong = Digest::sha256_of(b"not these bytes");
    assert!(
        store
            .commit_upload(&id, &wrong, Some("local/app".to_owned()))
            .await
            .is_err()
    );
    assert!(store.private_marks().owners(&wrong).is_empty());
    assert_eq!(store.stat(&wrong).await.unwrap(), None);
    assert_eq!(store.stat(&Digest::sha256_of(&other)).await.unwrap(), None);
    assert!(up.status(&id).await.is_err());
    assert_eq!(
        fixture.leftovers().await,
        0,
        "a refused upload left something"
    );
}

async fn delete(store: &Store, c: &Content) {
    let data = c.bytes("deleted", 1234);
    let d = Digest::sha256_of(&data);
    write_all(store, &data, 100).await.unwrap();
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(300);
    let listed = store.blobs().list().await.unwrap();
    let row = listed.iter().find(|b| b.digest == d);
    assert!(
        row.is_some_and(|b| b.size == 1234 && b.modified > before),
        "list reports the stored blob with its size and a recent time: {row:?}"
    );
    store.blobs().delete(&d).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(store.open(&d).await.unwrap().is_none());
    let listed = store.blobs().list().await.unwrap();
    assert!(
        listed.iter().all(|b| b.digest != d),
        "a deleted blob is not listed"
    );
    store.blobs().delete(&d).await.unwrap();
}

fn tag_key(c: &Content) -> TagKey {
    TagKey {
        upstream: UpstreamId::parse("contract.example").expect("a valid name"),
        repo: format!("org/{}", c.tag).parse::<RepoName>().unwrap(),
        tag: "v1".parse::<Tag>().unwrap(),
        class: AcceptClass::all_modern(),
    }
}

async fn records(store: &Store, c: &Content) {
    let m = Bytes::from(format!(r#"{{"schemaVersion":2,"run":"{}"}}"#, c.tag));
    let d = Digest::sha256_of(&m);
    let mt = MediaType::new(crate::oci::media_type::OCI_MANIFEST);
    assert_eq!(store.manifest(&d).await.unwrap(), None);
    store.put_manifest(&d, m.clone(), &mt).await.unwrap();
    let (bytes, rec) = store.manifest(&d).await.unwrap().unwrap();
    assert_eq!((bytes, rec.media_type.as_str()), (m.clone(), mt.as_str()));
    // Bytes that are not the digest are refused.
    let wrong = Digest::sha256_of(b"not this manifest");
    assert!(store.put_manifest(&wrong, m.clone(), &mt).await.is_err());
    assert_eq!(store.manifest(&wrong).await.unwrap(), None);

    let key = tag_key(c);
    assert_eq!(store.tag(&key).await.unwrap(), None);
    let rec = TagRecord {
        digest: d.clone(),
        media_type: mt.as_str().into(),
        size: m.len() as u64,
        checked_at_ms: 42,
    };
    store.put_tag(&key, &rec).await.unwrap();
    assert_eq!(store.tag(&key).await.unwrap(), Some(rec.clone()));
    let newer = TagRecord {
        checked_at_ms: 43,
        ..rec
    };
    assert_eq!(store.put_tag(&key, &newer).await.unwrap(), newer);
    assert_eq!(store.tag(&key).await.unwrap(), Some(newer.clone()));
    // A write of an older confirmation (one that was overtaken, or another
    // replica's) leaves the newer record, and says which one is stored.
    let older = TagRecord {
        checked_at_ms: 41,
        digest: wrong.clone(),
        ..newer.clone()
    };
    assert_eq!(store.put_tag(&key, &older).await.unwrap(), newer);
    assert_eq!(store.tag(&key).await.unwrap(), Some(newer));
    store.mark_repo(&key.upstream, &key.repo).await.unwrap();
    store.mark_repo(&key.upstream, &key.repo).await.unwrap();
    let repos = store.repos(&key.upstream).await.unwrap();
    assert_eq!(repos, vec![key.repo.as_str().to_owned()]);
    store
        .mark_private(&d, format!("{}/{}", key.upstream, key.repo))
        .await
        .unwrap();
}

async fn survives_a_restart(fixture: &dyn Fixture, c: &Content) {
    let before = fixture.open().await;
    let data = c.bytes("restart", 100_000);
    let d = Digest::sha256_of(&data);
    write_all(&before, &data, 4096).await.unwrap();
    drop(before);
    let after = fixture.open().await;
    assert_eq!(after.stat(&d).await.unwrap(), Some(100_000));
    assert_eq!(read_back(&after, &d).await.unwrap(), data);
    // The records written by `records` are there too.
    let key = tag_key(c);
    let tag = after.tag(&key).await.unwrap().expect("tag after restart");
    assert_eq!(tag.checked_at_ms, 43);
    assert!(after.manifest(&tag.digest).await.unwrap().is_some());
    assert_eq!(
        after.repos(&key.upstream).await.unwrap(),
        vec![key.repo.as_str().to_owned()]
    );
    let owner = format!("{}/{}", key.upstream, key.repo);
    assert_eq!(
        after.private_marks().owned_by(&tag.digest, &owner),
        Some(true)
    );
    after.remove_tag(&key).await.unwrap();
    assert_eq!(after.tag(&key).await.unwrap(), None);
}

async fn corrupt_objects_are_refused(fixture: &dyn Fixture, c: &Content) {
    let store = fixture.open().await;
    let data = c.bytes("rot", 50_000);
    let d = Digest::sha256_of(&data);
    write_all(&store, &data, 50_000).await.unwrap();
    let m = Bytes::from(format!(r#"{{"rot":"{}"}}"#, c.tag));
    let md = Digest::sha256_of(&m);
    store
        .put_manifest(&md, m, &MediaType::new("application/json"))
        .await
        .unwrap();
    fixture.corrupt(&d).await;
    fixture.corrupt(&md).await;
    // A corrupt manifest is never returned.
    assert_eq!(store.manifest(&md).await.unwrap(), None);
    // Verification finds both and removes them from service.
    let report = store.verify().await.unwrap();
    let hexes = [d.hex(), md.hex()];
    let found = report
        .quarantined
        .iter()
        .filter(|q| hexes.iter().any(|h| q.contains(h)))
        .count();
    assert_eq!(found, 2, "both quarantined: {:?}", report.quarantined);
    assert_eq!(store.stat(&d).await.unwrap(), None);
    let store = Arc::new(store);
    assert!(store.open(&d).await.unwrap().is_none());
}

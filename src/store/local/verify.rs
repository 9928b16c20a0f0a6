//! Re-hashing the whole store: every blob must hash to its name. Anything
//! that does not (bit rot, a file edited or truncated behind our back) is
//! moved to `quarantine/`, so it can never be served, and kept for
//! inspection. Stray files that are not named by a digest are quarantined
//! too.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::layout::Layout;
use crate::oci::{Algorithm, Digest, Digester};
use crate::store::{Error, VerifyReport};

fn hash_file(path: &Path, alg: Algorithm) -> std::io::Result<(Digest, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut d = Digester::new(alg);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        d.update(&buf[..r]);
        n += r as u64;
    }
    Ok((d.finish(), n))
}

impl Layout {
    /// Verifies every blob; quarantines failures (`removed` hears of each
    /// blob taken out). Blocking.
    pub(crate) fn verify(&self, removed: &dyn Fn(&Digest)) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        super::layout::walk_files(&self.root().join("blobs"), |path, _| {
            let alg = path
                .parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let expected: Option<Digest> = format!("{alg}:{name}").parse().ok();
            let good = match &expected {
                Some(d) => {
                    let (got, n) =
                        hash_file(&path, d.algorithm()).map_err(Error::io("read", &path))?;
                    (got == *d).then_some(n)
                }
                None => None,
            };
            match good {
                Some(n) => {
                    report.ok += 1;
                    report.bytes += n;
                }
                None => {
                    report
                        .quarantined
                        .push(self.quarantine(&path, &name)?.display().to_string());
                    if let Some(d) = &expected {
                        removed(d);
                    }
                }
            }
            Ok(())
        })?;
        Ok(report)
    }

    fn quarantine(&self, path: &Path, name: &str) -> Result<PathBuf, Error> {
        let dir = self.root().join("quarantine");
        std::fs::create_dir_all(&dir).map_err(Error::io("mkdir", &dir))?;
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dest = dir.join(format!("{name}.{n}"));
        std::fs::rename(path, &dest).map_err(Error::io("quarantine", path))?;
        tracing::warn!(path = %path.display(), moved_to = %dest.display(), "blob fails its digest; quarantined");
        Ok(dest)
    }
}

//! The layers of `src/lib.rs` point one way: a module may use modules on
//! its own line of the documented list or above it, never below. This reads
//! the list from the crate docs and every `crate::<module>` path in `src/`
//! (code, not comments), so a new arrow downwards, or a module missing from
//! the list, fails here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The documented layers: module name -> level (0 = top of the list).
fn layers() -> HashMap<String, usize> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let section = lib
        .split("//! # Layout")
        .nth(1)
        .and_then(|s| s.split("//! # ").next())
        .expect("lib.rs has a # Layout section");
    let mut out = HashMap::new();
    let mut level = 0;
    for line in section.lines() {
        let Some(item) = line.strip_prefix("//! - ") else {
            continue;
        };
        // The modules of this level are the links before the first ':'.
        let head = item.split(':').next().unwrap_or_default();
        for part in head.split("[`").skip(1) {
            let name = part.split('`').next().unwrap().to_owned();
            assert!(
                out.insert(name.clone(), level).is_none(),
                "{name} listed twice"
            );
        }
        level += 1;
    }
    assert!(out.len() > 10, "the layer list was not found: {out:?}");
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// Every `crate::name` in the code of `text` (line comments dropped).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for part in code.split("crate::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
        }
    }
    out
}

#[test]
fn modules_only_use_layers_at_or_above_their_own() {
    let layers = layers();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let Some(m) = module_of(f) else { continue };
        let Some(&mine) = layers.get(&m) else {
            wrong.push(format!("module {m} is not in the layer list of src/lib.rs"));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (line, used) in crate_paths(&text) {
            // Items of the crate root (error_chain) are not modules.
            let Some(&theirs) = layers.get(&used) else {
                continue;
            };
            if theirs > mine {
                wrong.push(format!(
                    "{}:{line}: {m} uses {used}, which is below it",
                    f.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "layering violations:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_a_downward_arrow() {
    // The check itself: a line using a lower module is found, a comment is
    // not.
    let paths = crate_paths("use crate::mirror::Mirror; // crate::app\n");
    assert_eq!(paths, vec![(1, "mirror".to_owned())]);
    let layers = layers();
    assert!(layers["store"] > layers["config"]);
    assert!(layers["registry"] > layers["mirror"]);
}

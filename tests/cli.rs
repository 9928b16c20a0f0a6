//! The binary's command line: `check-config` and `default-config`.

use std::process::Command;

fn mirrorgate(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorgate"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run mirrorgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (ok, text) = mirrorgate(&["check-config", &format!("{root}/config/default.toml")]);
    assert!(ok, "{text}");
    assert!(text.contains("3 upstreams, 3 listeners"), "{text}");
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[[listener]]\naddr = \"127.0.0.1:5000\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n";
    let cases = [
        (format!("{base}colour = \"blue\"\n"), "colour"),
        (
            base.replace("https://registry-1.docker.io", "::nope"),
            "upstream[0].url",
        ),
        (
            format!("{base}[[upstream]]\nname = \"docker.io\"\nurl = \"https://x\"\n"),
            "duplicate upstream name",
        ),
        (
            format!("{base}[[listener]]\naddr = \"0.0.0.0:5000\"\n"),
            "duplicate listener port",
        ),
        (
            format!("{base}ca_file = \"missing.pem\"\n"),
            "upstream[0].ca_file",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, out) = mirrorgate(&["check-config", path.to_str().unwrap()]);
        assert!(!ok, "case {i} should fail");
        assert!(out.contains(want), "case {i}: want {want:?} in {out:?}");
    }
    let (ok, out) = mirrorgate(&["check-config", "/nonexistent/mirrorgate.toml"]);
    assert!(!ok);
    assert!(out.contains("cannot read config file"), "{out}");
}

#[test]
fn default_config_is_printed_and_valid() {
    let (ok, text) = mirrorgate(&["default-config"]);
    assert!(ok);
    assert!(text.contains("registry-1.docker.io"));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.toml");
    std::fs::write(&p, text).unwrap();
    assert!(mirrorgate(&["check-config", p.to_str().unwrap()]).0);
}

#[test]
fn ca_init_show_and_refuse_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("certs");
    let d = d.to_str().unwrap();
    let (ok, out) = mirrorgate(&["ca", "init", "--dir", d]);
    assert!(ok, "{out}");
    let fp = out
        .lines()
        .find_map(|l| l.strip_prefix("sha256 fingerprint "))
        .unwrap()
        .to_owned();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(format!("{d}/ca.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let (ok, out) = mirrorgate(&["ca", "init", "--dir", d]);
    assert!(!ok);
    assert!(out.contains("already exists"), "{out}");
    let (ok, out) = mirrorgate(&["ca", "show", "--dir", d]);
    assert!(ok);
    assert!(out.contains(&fp) && out.contains("ca.crt"), "{out}");
    let (ok, out) = mirrorgate(&["ca", "init", "--dir", d, "--force"]);
    assert!(ok);
    assert!(!out.contains(&fp), "--force makes a new CA");
    let (ok, out) = mirrorgate(&["ca", "show", "--dir", "/nonexistent/certs"]);
    assert!(!ok);
    assert!(out.contains("ca init"), "{out}");
}

/// Commands that never talk to an upstream work without its secrets;
/// `check-config` and `serve` still insist on them.
#[test]
fn tools_do_not_need_upstream_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "[tls]\nca_dir = \"certs\"\nnames = [\"mirror.test\"]\n[[listener]]\naddr = \"127.0.0.1:5443\"\ntls = true\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n\
         username = \"me\"\npassword = { env = \"MIRRORGATE_TEST_UNSET_SECRET\" }\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let (ok, out) = mirrorgate(&["ca", "init", "--config", cfg]);
    assert!(ok, "{out}");
    let (ok, out) = mirrorgate(&["ca", "show", "--config", cfg]);
    assert!(ok, "{out}");
    let (ok, out) = mirrorgate(&[
        "client-config",
        "containerd",
        "--config",
        cfg,
        "--mirror",
        "mirror.test:5443",
    ]);
    assert!(ok && out.contains("hosts.toml"), "{out}");
    let (ok, out) = mirrorgate(&["check-config", cfg]);
    assert!(!ok && out.contains("MIRRORGATE_TEST_UNSET_SECRET"), "{out}");
}

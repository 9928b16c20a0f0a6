//! Golden tests for every generated client configuration, plus checks that
//! each file parses and has what the client needs. `UPDATE_GOLDENS=1`
//! rewrites the goldens in `tests/fixtures/client-config/`.

use std::path::{Path, PathBuf};

use mirrorgate::clientconfig::{ClientKind, GeneratedFile, Mirror, generate, render};
use mirrorgate::config::Config;

const CONFIG: &str = r#"
[[listener]]
addr = "0.0.0.0:5443"
tls = true
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
aliases = ["index.docker.io", "registry-1.docker.io"]
default = true
[[upstream]]
name = "ghcr.io"
url = "https://ghcr.io"
[[upstream]]
name = "quay.io"
url = "https://quay.io"
[[upstream]]
name = "registry.internal"
url = "http://10.1.2.3:5000/v2-root"
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(kind: ClientKind) -> Vec<GeneratedFile> {
    let config = Config::from_toml(CONFIG, Path::new(".")).unwrap();
    let ca = std::fs::read_to_string(root().join("tests/fixtures/extra-roots.pem")).unwrap();
    let mirror: Mirror = "mirror.internal:5443".parse().unwrap();
    generate(
        kind,
        &config,
        &mirror,
        &ca,
        Path::new(kind.default_install_dir()),
    )
    .unwrap()
}

fn contents<'a>(files: &'a [GeneratedFile], path: &str) -> &'a str {
    &files
        .iter()
        .find(|f| f.path == Path::new(path))
        .unwrap_or_else(|| panic!("no {path}"))
        .contents
}

#[test]
fn goldens() {
    for (kind, name) in [
        (ClientKind::Containerd, "containerd"),
        (ClientKind::Docker, "docker"),
        (ClientKind::Buildkit, "buildkit"),
        (ClientKind::Podman, "podman"),
        (ClientKind::K3s, "k3s"),
        (ClientKind::Kind, "kind"),
        (ClientKind::Talos, "talos"),
    ] {
        let text = render(&files(kind));
        let golden = root().join(format!("tests/fixtures/client-config/{name}.txt"));
        if std::env::var_os("UPDATE_GOLDENS").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &text).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(
            text, want,
            "{name} differs from its golden (UPDATE_GOLDENS=1 to rewrite)"
        );
        for word in ["insecure", "skip_verify", "skip-verify", "tls-verify"] {
            assert!(!text.contains(word), "{name} must not contain {word}");
        }
    }
}

#[test]
fn containerd_hosts_toml_parses() {
    let f = files(ClientKind::Containerd);
    for name in ["docker.io", "ghcr.io", "quay.io", "registry.internal"] {
        let v: toml::Value = toml::from_str(contents(&f, &format!("{name}/hosts.toml"))).unwrap();
        let host = &v["host"]["https://mirror.internal:5443"];
        assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        assert_eq!(
            host["ca"].as_str().unwrap(),
            format!("/etc/containerd/certs.d/{name}/mirrorgate-ca.crt")
        );
        assert!(
            f.iter()
                .any(|x| x.path == Path::new(&format!("{name}/mirrorgate-ca.crt")))
        );
    }
    let v: toml::Value = toml::from_str(contents(&f, "docker.io/hosts.toml")).unwrap();
    assert_eq!(v["server"].as_str(), Some("https://registry-1.docker.io"));
}

#[test]
fn docker_buildkit_podman_k3s_parse() {
    let f = files(ClientKind::Docker);
    let v: serde_json::Value = serde_json::from_str(contents(&f, "daemon.json")).unwrap();
    assert_eq!(v["registry-mirrors"][0], "https://mirror.internal:5443");
    contents(&f, "certs.d/mirror.internal:5443/ca.crt");

    let f = files(ClientKind::Buildkit);
    let v: toml::Value = toml::from_str(contents(&f, "buildkitd.toml")).unwrap();
    assert_eq!(
        v["registry"]["ghcr.io"]["mirrors"][0].as_str(),
        Some("mirror.internal:5443")
    );
    assert_eq!(
        v["registry"]["mirror.internal:5443"]["ca"][0].as_str(),
        Some("/etc/buildkit/mirrorgate-ca.crt")
    );

    let f = files(ClientKind::Podman);
    let v: toml::Value = toml::from_str(contents(&f, "registries.conf")).unwrap();
    let regs = v["registry"].as_array().unwrap();
    assert_eq!(regs.len(), 4);
    let internal = regs
        .iter()
        .find(|r| r["prefix"].as_str() == Some("registry.internal"))
        .unwrap();
    assert_eq!(internal["location"].as_str(), Some("10.1.2.3:5000/v2-root"));
    assert_eq!(
        internal["mirror"][0]["location"].as_str(),
        Some("mirror.internal:5443/registry.internal")
    );
    contents(&f, "certs.d/mirror.internal:5443/ca.crt");

    let f = files(ClientKind::K3s);
    let y = contents(&f, "registries.yaml");
    assert!(
        y.contains("  \"quay.io\":\n    endpoint:\n      - \"https://mirror.internal:5443\"\n")
    );
    assert!(y.contains("      ca_file: \"/etc/rancher/k3s/mirrorgate-ca.crt\"\n"));
}

#[test]
fn cli_writes_files_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_mirrorgate");
    let certs = dir.path().join("certs");
    let ok = std::process::Command::new(bin)
        .args(["ca", "init", "--dir", certs.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = dir.path().join("out");
    let o = std::process::Command::new(bin)
        .args([
            "client-config",
            "containerd",
            "--mirror",
            "localhost:5443",
            "--ca",
        ])
        .arg(certs.join("ca.crt"))
        .arg("--out")
        .arg(&out)
        .arg("--install-dir")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hosts = std::fs::read_to_string(out.join("docker.io/hosts.toml")).unwrap();
    assert!(hosts.contains(&format!(
        "ca = \"{}\"",
        out.join("docker.io/mirrorgate-ca.crt").display()
    )));
    assert_eq!(
        std::fs::read(out.join("docker.io/mirrorgate-ca.crt")).unwrap(),
        std::fs::read(certs.join("ca.crt")).unwrap()
    );
    let o = std::process::Command::new(bin)
        .args(["client-config", "podman", "--mirror", "bad host:1", "--ca"])
        .arg(certs.join("ca.crt"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--mirror"));
}

#[test]
fn kind_and_talos_parse() {
    let f = files(ClientKind::Kind);
    let v: serde_json::Value = serde_norway::from_str(contents(&f, "kind-config.yaml")).unwrap();
    assert_eq!(v["kind"], "Cluster");
    assert_eq!(v["apiVersion"], "kind.x-k8s.io/v1alpha4");
    let patch = v["containerdConfigPatches"][0].as_str().unwrap();
    let t: toml::Value = toml::from_str(patch).unwrap();
    assert_eq!(
        t["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );
    let mount = &v["nodes"][0]["extraMounts"][0];
    assert_eq!(mount["hostPath"], "/etc/mirrorgate/kind/certs.d");
    assert_eq!(mount["containerPath"], "/etc/containerd/certs.d");
    // The hosts.toml files name the CA where the node sees it.
    let h: toml::Value = toml::from_str(contents(&f, "certs.d/ghcr.io/hosts.toml")).unwrap();
    assert_eq!(
        h["host"]["https://mirror.internal:5443"]["ca"].as_str(),
        Some("/etc/containerd/certs.d/ghcr.io/mirrorgate-ca.crt")
    );
    contents(&f, "certs.d/ghcr.io/mirrorgate-ca.crt");

    let ca = std::fs::read_to_string(root().join("tests/fixtures/extra-roots.pem")).unwrap();
    let f = files(ClientKind::Talos);
    let v: serde_json::Value = serde_norway::from_str(contents(&f, "machine-patch.yaml")).unwrap();
    let regs = &v["machine"]["registries"];
    assert_eq!(
        regs["mirrors"]["docker.io"]["endpoints"][0],
        "https://mirror.internal:5443"
    );
    assert_eq!(regs["mirrors"].as_object().unwrap().len(), 4);
    use base64::Engine as _;
    let b64 = regs["config"]["mirror.internal:5443"]["tls"]["ca"]
        .as_str()
        .unwrap();
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(
        pem,
        ca.as_bytes(),
        "the legacy format takes the CA base64-encoded"
    );
    let docs: Vec<serde_json::Value> =
        serde_norway::Deserializer::from_str(contents(&f, "registry-documents.yaml"))
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    assert_eq!(docs.len(), 5, "four mirrors and the TLS document");
    assert!(docs.iter().all(|d| d["apiVersion"] == "v1alpha1"));
    let quay = docs.iter().find(|d| d["name"] == "quay.io").unwrap();
    assert_eq!(quay["kind"], "RegistryMirrorConfig");
    assert_eq!(quay["endpoints"][0]["url"], "https://mirror.internal:5443");
    let tls = docs.last().unwrap();
    assert_eq!(tls["kind"], "RegistryTLSConfig");
    assert_eq!(tls["name"], "mirror.internal:5443");
    assert_eq!(
        tls["ca"].as_str().unwrap(),
        ca.trim_end(),
        "the new format takes PEM"
    );
}

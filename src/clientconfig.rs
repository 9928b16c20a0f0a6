//! Client configuration generator: writes, for every configured upstream,
//! the files each container client needs to pull through the mirror's TLS
//! port, trusting the mirror's CA (no `insecure`, no `skip_verify`).
//!
//! How each client names the upstream (see the crate docs on routing):
//! containerd, BuildKit and k3s add `?ns=<registry>`, so one mirror URL
//! serves every registry; podman/skopeo/CRI-O get a path prefix
//! (`HOST:PORT/<upstream>`); dockerd mirrors only Docker Hub and names
//! nothing, so it relies on the mirror's default upstream being docker.io.
//!
//! Output layout (paths relative to `--out`; copy them into the install
//! directory, whose absolute paths the files refer to):
//!
//! | kind | files | install directory |
//! |---|---|---|
//! | containerd | `<registry>/hosts.toml`, `<registry>/mirrorgate-ca.crt` | `/etc/containerd/certs.d` (`config_path`, or `ctr --hosts-dir`) |
//! | docker | `daemon.json`, `certs.d/<mirror address>/ca.crt` (no `:443`) | `/etc/docker` |
//! | buildkit | `buildkitd.toml`, `mirrorgate-ca.crt` | `/etc/buildkit` |
//! | podman | `registries.conf`, `certs.d/<mirror address>/ca.crt` (no `:443`) | `/etc/containers` |
//! | k3s | `registries.yaml`, `mirrorgate-ca.crt` | `/etc/rancher/k3s` |
//! | kind | `kind-config.yaml`, `certs.d/<registry>/hosts.toml` and CA (mounted at `/etc/containerd/certs.d` in each node) | any host directory: `kind create cluster --config <dir>/kind-config.yaml` |
//! | talos | `machine-patch.yaml` (`machine.registries`), `registry-documents.yaml` (`RegistryMirrorConfig`, `RegistryTLSConfig`; Talos 1.12+) | applied with `talosctl patch mc --patch @FILE` or at `gen config` |

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::config::Config;

/// A client whose configuration can be generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// containerd `hosts.toml` (also CRI, nerdctl, `ctr --hosts-dir`).
    Containerd,
    /// dockerd `daemon.json` (Docker Hub only).
    Docker,
    /// BuildKit `buildkitd.toml`.
    Buildkit,
    /// podman, skopeo, buildah, CRI-O `registries.conf`.
    Podman,
    /// k3s / RKE2 `registries.yaml`.
    K3s,
    /// kind: a cluster config whose `containerdConfigPatches` point
    /// containerd at `hosts.toml` files mounted into every node.
    Kind,
    /// Talos: a machine config patch (`machine.registries`, before v1.12)
    /// and the `RegistryMirrorConfig` / `RegistryTLSConfig` documents.
    Talos,
}

impl ClientKind {
    /// Where the client reads the generated files from, by default.
    pub fn default_install_dir(self) -> &'static str {
        match self {
            Self::Containerd => "/etc/containerd/certs.d",
            Self::Docker => "/etc/docker",
            Self::Buildkit => "/etc/buildkit",
            Self::Podman => "/etc/containers",
            Self::K3s => "/etc/rancher/k3s",
            Self::Kind => "/etc/mirrorgate/kind",
            Self::Talos => "/etc/mirrorgate/talos",
        }
    }
}

/// The mirror as clients reach it: `HOST[:PORT]` (port 443 when omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TLS port.
    pub port: u16,
}

/// A generator error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--mirror` is not `HOST[:PORT]`.
    #[error("invalid --mirror {0:?}: expected HOST[:PORT]")]
    Mirror(String),
    /// The CA file holds no certificate.
    #[error("the CA file holds no PEM certificate")]
    Ca,
    /// Writing a file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl FromStr for Mirror {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || Error::Mirror(s.to_owned());
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
            match tail {
                "" => (h, None),
                t => (h, Some(t.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else if s.matches(':').count() > 1 {
            (s, None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            None => 443,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
        };
        let ok = !host.is_empty()
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !ok {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Mirror {
    /// `host:port` as clients write it (`[v6]:port`; no port for 443).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            f.write_str(&host)
        } else {
            write!(f, "{host}:{}", self.port)
        }
    }
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to the output (and install) directory.
    pub path: PathBuf,
    /// Contents.
    pub contents: String,
}

fn toml_str(s: &str) -> String {
    // A TOML basic string; serde_json's escaping is valid TOML for these.
    serde_json::to_string(s).unwrap_or_default()
}

fn header(kind: ClientKind, mirror: &Mirror) -> String {
    format!(
        "# generated by mirrorgate client-config {}: pull through the mirror at https://{mirror}\n",
        format!("{kind:?}").to_ascii_lowercase()
    )
}

/// The upstream URL's `host[:port][/path]`, as containers/image wants a
/// registry location.
fn location(url: &url::Url) -> String {
    let mut s = url.host_str().unwrap_or_default().to_owned();
    if let Some(p) = url.port() {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(url.path().trim_end_matches('/'));
    s
}

/// Generates `kind`'s files for every upstream in `config`. `install_dir`
/// is where they will live (absolute paths inside refer to it).
pub fn generate(
    kind: ClientKind,
    config: &Config,
    mirror: &Mirror,
    ca_pem: &str,
    install_dir: &Path,
) -> Result<Vec<GeneratedFile>, Error> {
    if crate::pem::parse_certs(ca_pem.as_bytes()).is_empty() {
        return Err(Error::Ca);
    }
    let abs = |rel: &str| install_dir.join(rel).display().to_string();
    let file = |path: String, contents: String| GeneratedFile {
        path: PathBuf::from(path),
        contents,
    };
    let mut upstreams: Vec<_> = config.upstreams.iter().collect();
    upstreams.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = Vec::new();
    match kind {
        ClientKind::Containerd => {
            for u in &upstreams {
                let name = u.id.as_str();
                let ca = abs(&format!("{name}/mirrorgate-ca.crt"));
                let url = u.url.as_str().trim_end_matches('/');
                let text = format!(
                    "{}# containerd sends ?ns={name}, which selects the upstream; `server` is the\n\
                     # registry itself, tried when the mirror fails.\n\
                     server = {}\n\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {}\n",
                    header(kind, mirror),
                    toml_str(url),
                    toml_str(&format!("https://{mirror}")),
                    toml_str(&ca),
                );
                out.push(file(format!("{name}/hosts.toml"), text));
                out.push(file(format!("{name}/mirrorgate-ca.crt"), ca_pem.to_owned()));
            }
        }
        ClientKind::Docker => {
            let json = serde_json::json!({ "registry-mirrors": [format!("https://{mirror}")] });
            let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
            out.push(file("daemon.json".into(), text));
            out.push(file(format!("certs.d/{mirror}/ca.crt"), ca_pem.to_owned()));
        }
        ClientKind::Buildkit => {
            let mut text = header(kind, mirror);
            text.push_str("# BuildKit sends ?ns=<registry>, which selects the upstream.\n");
            for u in &upstreams {
                text.push_str(&format!(
                    "\n[registry.{}]\n  mirrors = [{}]\n",
                    toml_str(u.id.as_str()),
                    toml_str(&mirror.to_string())
                ));
            }
            // TLS settings for a mirror live under the mirror's own key.
            text.push_str(&format!(
                "\n[registry.{}]\n  ca = [{}]\n",
                toml_str(&mirror.to_string()),
                toml_str(&abs("mirrorgate-ca.crt"))
            ));
            out.push(file("buildkitd.toml".into(), text));
            out.push(file("mirrorgate-ca.crt".into(), ca_pem.to_owned()));
        }
        ClientKind::Podman => {
            let mut text = header(kind, mirror);
            text.push_str(
                "# containers/image names no upstream: the path prefix after the mirror\n\
                 # address selects it. The CA is read from certs.d/<mirror address>/.\n",
            );
            for u in &upstreams {
                text.push_str(&format!(
                    "\n[[registry]]\nprefix = {}\nlocation = {}\n\n[[registry.mirror]]\nlocation = {}\n",
                    toml_str(u.id.as_str()),
                    toml_str(&location(&u.url)),
                    toml_str(&format!("{mirror}/{}", u.id)),
                ));
            }
            out.push(file("registries.conf".into(), text));
            out.push(file(format!("certs.d/{mirror}/ca.crt"), ca_pem.to_owned()));
        }
        ClientKind::K3s => {
            let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
            let mut text = header(kind, mirror);
            text.push_str(
                "# k3s renders containerd hosts.toml: requests carry ?ns=<registry>.\nmirrors:\n",
            );
            for u in &upstreams {
                text.push_str(&format!(
                    "  {}:\n    endpoint:\n      - {}\n",
                    q(u.id.as_str()),
                    q(&format!("https://{mirror}"))
                ));
            }
            text.push_str(&format!(
                "configs:\n  {}:\n    tls:\n      ca_file: {}\n",
                q(&mirror.to_string()),
                q(&abs("mirrorgate-ca.crt"))
            ));
            out.push(file("registries.yaml".into(), text));
            out.push(file("mirrorgate-ca.crt".into(), ca_pem.to_owned()));
        }
        ClientKind::Kind => {
            // containerd's hosts.toml tree, as it is inside a node.
            let node_dir = Path::new("/etc/containerd/certs.d");
            let inner = generate(ClientKind::Containerd, config, mirror, ca_pem, node_dir)?;
            let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
            let text = format!(
                "{}# kind create cluster --config {}\n\
                 # containerd in every node reads hosts.toml files (with ?ns=<registry>)\n\
                 # from /etc/containerd/certs.d, mounted from this directory.\n\
                 kind: Cluster\n\
                 apiVersion: kind.x-k8s.io/v1alpha4\n\
                 containerdConfigPatches:\n  - |-\n    \
                 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n      \
                 config_path = \"/etc/containerd/certs.d\"\n\
                 nodes:\n  - role: control-plane\n    extraMounts:\n      \
                 - hostPath: {}\n        containerPath: /etc/containerd/certs.d\n        \
                 readOnly: true\n",
                header(kind, mirror),
                abs("kind-config.yaml"),
                q(&abs("certs.d")),
            );
            out.push(file("kind-config.yaml".into(), text));
            for f in inner {
                out.push(GeneratedFile {
                    path: Path::new("certs.d").join(&f.path),
                    contents: f.contents,
                });
            }
        }
        ClientKind::Talos => {
            use base64::Engine as _;
            let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
            let endpoint = format!("https://{mirror}");
            let indent = |s: &str, n: usize| {
                s.lines()
                    .map(|l| format!("{}{l}\n", " ".repeat(n)))
                    .collect::<String>()
            };
            // Before Talos 1.12: one machine config patch; the CA base64.
            let mut legacy = header(kind, mirror);
            legacy.push_str(
                "# talosctl patch mc --patch @machine-patch.yaml (Talos before 1.12).\n\
                 # Talos renders containerd hosts.toml: requests carry ?ns=<registry>.\n\
                 machine:\n  registries:\n    mirrors:\n",
            );
            for u in &upstreams {
                legacy.push_str(&format!(
                    "      {}:\n        endpoints:\n          - {}\n",
                    q(u.id.as_str()),
                    q(&endpoint)
                ));
            }
            legacy.push_str(&format!(
                "    config:\n      {}:\n        tls:\n          ca: {}\n",
                q(&mirror.to_string()),
                q(&base64::engine::general_purpose::STANDARD.encode(ca_pem))
            ));
            out.push(file("machine-patch.yaml".into(), legacy));
            // Talos 1.12 and later: one document per mirror, and the TLS
            // settings of the mirror endpoint (the CA as PEM).
            let mut docs = header(kind, mirror);
            docs.push_str(
                "# talosctl patch mc --patch @registry-documents.yaml (Talos 1.12 and later).\n",
            );
            for u in &upstreams {
                docs.push_str(&format!(
                    "---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: {}\n\
                     endpoints:\n  - url: {}\n",
                    q(u.id.as_str()),
                    q(&endpoint)
                ));
            }
            docs.push_str(&format!(
                "---\napiVersion: v1alpha1\nkind: RegistryTLSConfig\nname: {}\nca: |-\n{}",
                q(&mirror.to_string()),
                indent(ca_pem.trim_end(), 2)
            ));
            out.push(file("registry-documents.yaml".into(), docs));
        }
    }
    Ok(out)
}

/// A POSIX shell script that installs `files` under `install_dir` on the
/// node it runs on (what `GET /setup/<client>` serves). `MIRRORGATE_ROOT`
/// prefixes every path (a staging directory); an existing file that differs
/// is kept as `<file>.mirrorgate-old`. It prints what the client still needs
/// (a restart, containerd's `config_path`).
pub fn setup_script(
    kind: ClientKind,
    mirror: &Mirror,
    files: &[GeneratedFile],
    install_dir: &Path,
) -> String {
    let name = format!("{kind:?}").to_ascii_lowercase();
    let mut s = format!(
        "#!/bin/sh\n\
         # generated by mirrorgate: {name} pulls through the mirror at https://{mirror}\n\
         # run as root on the node: curl -fsS --cacert ca.crt https://{mirror}/setup/{name} | sh\n\
         set -eu\n\
         umask 022\n\
         root=\"${{MIRRORGATE_ROOT:-}}\"\n\
         put() {{ # PATH: stdin into $root/PATH, keeping a different old file\n  \
         f=\"$root$1\"; mkdir -p \"$(dirname \"$f\")\"\n  \
         tmp=\"$f.mirrorgate-new\"; cat >\"$tmp\"\n  \
         if [ -e \"$f\" ] && ! cmp -s \"$f\" \"$tmp\"; then\n    \
         mv \"$f\" \"$f.mirrorgate-old\"; echo \"kept the old $1 as $1.mirrorgate-old\"\n  \
         fi\n  \
         mv \"$tmp\" \"$f\"; echo \"wrote $1\"\n\
         }}\n"
    );
    for f in files {
        let path = install_dir.join(&f.path);
        // A quoted here-document: nothing in it is expanded. The marker
        // cannot occur in the generated files (PEM, TOML, JSON, YAML).
        s.push_str(&format!(
            "put '{}' <<'MIRRORGATE_EOF'\n{}{}MIRRORGATE_EOF\n",
            path.display(),
            f.contents,
            if f.contents.ends_with('\n') { "" } else { "\n" }
        ));
    }
    let after = match kind {
        ClientKind::Containerd => format!(
            "containerd reads these with config_path = \"{}\" in the CRI registry\n\
             section of /etc/containerd/config.toml (ctr: --hosts-dir {});\n\
             no restart is needed once it is set.",
            install_dir.display(),
            install_dir.display()
        ),
        ClientKind::Docker => "restart dockerd: systemctl restart docker".to_owned(),
        ClientKind::Podman => {
            "podman, skopeo and buildah read these at their next start".to_owned()
        }
        ClientKind::Buildkit => "restart buildkitd".to_owned(),
        ClientKind::K3s => "restart k3s (or rke2)".to_owned(),
        ClientKind::Kind => {
            "create the cluster: kind create cluster --config <the kind-config.yaml above>"
                .to_owned()
        }
        ClientKind::Talos => "apply with talosctl patch mc --patch @<file above>".to_owned(),
    };
    s.push_str(&format!(
        "cat <<'MIRRORGATE_EOF'\n{after}\nMIRRORGATE_EOF\n"
    ));
    s
}

/// Writes the files under `out` (CA files 0644, configs 0644).
pub fn write_out(files: &[GeneratedFile], out: &Path) -> Result<(), Error> {
    for f in files {
        let path = out.join(&f.path);
        let io = |source| Error::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&path, &f.contents).map_err(io)?;
    }
    Ok(())
}

/// All files as one text, each preceded by `# ==> <path> <==`.
pub fn render(files: &[GeneratedFile]) -> String {
    let mut s = String::new();
    for f in files {
        s.push_str(&format!("# ==> {} <==\n{}", f.path.display(), f.contents));
        if !f.contents.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_addresses() {
        let m: Mirror = "Mirror.Internal:5443".parse().unwrap();
        assert_eq!(
            (m.host.as_str(), m.port, m.to_string()),
            ("mirror.internal", 5443, "mirror.internal:5443".into())
        );
        // Port 443 is left out, as clients write it; docker and
        // containers/image name the certs.d directory after the host as
        // written, so the CA goes to certs.d/mirror.internal/.
        let m: Mirror = "mirror.internal".parse().unwrap();
        assert_eq!((m.port, m.to_string()), (443, "mirror.internal".into()));
        let c = crate::config::Config::embedded_default().unwrap();
        for kind in [ClientKind::Docker, ClientKind::Podman] {
            let ca = rcgen::generate_simple_self_signed(vec!["ca".into()])
                .unwrap()
                .cert
                .pem();
            let files = generate(kind, &c, &m, &ca, Path::new("/etc/x")).unwrap();
            assert!(
                files
                    .iter()
                    .any(|f| f.path == std::path::Path::new("certs.d/mirror.internal/ca.crt")),
                "{kind:?}: {:?}",
                files.iter().map(|f| &f.path).collect::<Vec<_>>()
            );
        }
        let m: Mirror = "[::1]:5443".parse().unwrap();
        assert_eq!(
            (m.host.as_str(), m.to_string()),
            ("::1", "[::1]:5443".into())
        );
        assert_eq!("::1".parse::<Mirror>().unwrap().port, 443);
        for bad in [
            "", ":5443", "m:0", "m:99999", "m:x", "m/path", "[::1", "a b",
        ] {
            assert!(bad.parse::<Mirror>().is_err(), "{bad}");
        }
    }
}

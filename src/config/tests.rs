use super::*;

fn parse(text: &str) -> Result<Config, Error> {
    Config::from_toml(text, Path::new("/base"))
}

const MINIMAL: &str = r#"
[[listener]]
addr = "127.0.0.1:5000"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
default = true
"#;

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded_default().unwrap();
    assert_eq!(c.upstreams.len(), 3);
    assert_eq!(c.listeners.len(), 3);
    assert_eq!(
        c.listeners[1].upstream.as_ref().unwrap().as_str(),
        "ghcr.io"
    );
    assert_eq!(
        c.listeners[2].upstream.as_ref().unwrap().as_str(),
        "quay.io"
    );
    assert!(c.upstreams[0].default && c.upstreams[0].implicit_library);
    assert!(!c.upstreams[1].implicit_library);
    assert_eq!(c.cache.tag_ttl, Duration::from_secs(300));
}

#[test]
fn minimal_and_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.storage_root, Path::new("/base/./data"));
    assert_eq!(c.cache.metadata_max_bytes, DEFAULT_METADATA_MAX);
    assert_eq!(c.upstreams[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert!(!c.upstreams[0].http2, "HTTP/1.1 to upstreams unless asked");
    let c = parse(&format!("{MINIMAL}http2 = true\n")).unwrap();
    assert!(c.upstreams[0].http2);
    assert!(parse(&format!("{MINIMAL}http2 = \"yes\"\n")).is_err());
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn unknown_key_is_named() {
    let e = err(&format!("{MINIMAL}\n[cache]\ntag_tll = \"5m\"\n"));
    assert!(e.contains("tag_tll"), "{e}");
    let e = err(&MINIMAL.replace("default = true", "defualt = true"));
    assert!(e.contains("defualt"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (MINIMAL.replace("https://registry-1.docker.io", "not a url"), "upstream[0].url"),
        (MINIMAL.replace("https://registry-1.docker.io", "ftp://x"), "upstream[0].url"),
        (MINIMAL.replace("127.0.0.1:5000", "localhost"), "listener[0].addr"),
        (format!("{MINIMAL}\n[cache]\ntag_ttl = \"soon\"\n"), "cache.tag_ttl"),
        (
            format!("{MINIMAL}[[upstream]]\nname = \"docker.io\"\nurl = \"https://x\"\n"),
            "duplicate upstream name",
        ),
        (
            format!("{MINIMAL}[[upstream]]\nname = \"x\"\nurl = \"https://x\"\naliases = [\"docker.io\"]\n"),
            "duplicate upstream name or alias",
        ),
        (
            format!("{MINIMAL}[[listener]]\naddr = \"0.0.0.0:5000\"\n"),
            "duplicate listener port 5000",
        ),
        (
            format!("{MINIMAL}[[listener]]\naddr = \"0.0.0.0:5001\"\nupstream = \"nope\"\n"),
            "listener[1].upstream",
        ),
        (
            MINIMAL.replace("default = true", "default = true\nca_file = \"/nonexistent/ca.pem\""),
            "upstream[0].ca_file",
        ),
        (
            MINIMAL.replace("default = true", "default = true\nusername = \"u\""),
            "upstream[0].password",
        ),
        (
            MINIMAL.replace(
                "default = true",
                "default = true\nusername = \"u\"\npassword = { env = \"MIRRORGATE_TEST_UNSET_VAR\" }",
            ),
            "MIRRORGATE_TEST_UNSET_VAR",
        ),
        (
            format!("{MINIMAL}[[upstream]]\nname = \"b\"\nurl = \"https://x\"\ndefault = true\n"),
            "only one upstream may be the default",
        ),
        (MINIMAL.replace("docker.io\"", "Docker IO\""), "upstream[0].name"),
        (
            MINIMAL.replace("default = true", "default = true\nhosts = [\"registry-1.docker.io\"]"),
            "upstream[0].connect_to",
        ),
        (
            MINIMAL.replace("default = true", "default = true\nconnect_to = [\"nope\"]"),
            "upstream[0].connect_to[0]",
        ),
        (MINIMAL.replace("default = true", "default = true\nhosts = [\"10.0.0.1\"]"), "upstream[0].hosts[0]"),
        (
            format!("{MINIMAL}[[upstream]]\nname = \"q\"\nurl = \"https://q\"\nhosts = [\"a.test\"]\n[[upstream]]\nname = \"r\"\nurl = \"https://r\"\nhosts = [\"A.test\"]\n"),
            "claimed by two upstreams",
        ),
        (format!("{MINIMAL}[tls]\ncert_file = \"c.pem\"\n"), "tls.key_file"),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
}

#[test]
fn passwords_from_file_and_inline_never_print() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let text = MINIMAL.replace(
        "default = true",
        "default = true\nusername = \"u\"\npassword = { file = \"pw\" }",
    );
    let c = Config::from_toml(&text, dir.path()).unwrap();
    let creds = c.upstreams[0].credentials.as_ref().unwrap();
    assert_eq!(creds.password.expose(), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));

    let text = MINIMAL.replace(
        "default = true",
        "default = true\nusername = \"u\"\npassword = \"inl1ne\"",
    );
    let c = parse(&text).unwrap();
    assert!(!format!("{c:?}").contains("inl1ne"));
}

#[test]
fn example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mirrorgate.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The example reads its password from HUB_TOKEN and its CA from a file:
    // give it a base directory where that file exists.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/extra-roots.pem"),
        dir.path().join("extra-roots.pem"),
    )
    .unwrap();
    let text = text.replace("{ env = \"HUB_TOKEN\" }", "\"example\"");
    let c = Config::from_toml(&text, dir.path()).unwrap();
    assert!(c.upstreams.len() >= 3);
}

/// The example's `[storage.s3]` table, uncommented: every key it documents
/// is accepted.
#[test]
fn example_s3_table_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mirrorgate.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        if line == "#[storage.s3]" || line == "#[cluster]" {
            inside = true;
        } else if line.is_empty() {
            inside = false;
        }
        let key_line = line.starts_with('#')
            && line[1..].starts_with(|c: char| c.is_ascii_lowercase() || c == '[');
        out.push_str(if inside && key_line { &line[1..] } else { line });
        out.push('\n');
    }
    let out = out
        .replace("{ env = \"HUB_TOKEN\" }", "\"example\"")
        .replace("{ env = \"AWS_ACCESS_KEY_ID\" }", "\"id\"")
        .replace("{ env = \"AWS_SECRET_ACCESS_KEY\" }", "\"key\"")
        .replace(
            "{ env = \"MIRRORGATE_CLUSTER_SECRET\" }",
            "\"a-cluster-secret-of-32-bytes-long\"",
        );
    let dir = tempfile::tempdir().unwrap();
    let pem = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/extra-roots.pem");
    std::fs::copy(&pem, dir.path().join("extra-roots.pem")).unwrap();
    std::fs::copy(&pem, dir.path().join("s3-ca.pem")).unwrap();
    let c = Config::from_toml(&out, dir.path()).unwrap();
    let s3 = c.s3.expect("the s3 table is read");
    assert_eq!(s3.bucket, "mirrorgate");
    assert_eq!(s3.prefix, "mirror/");
    assert_eq!(s3.redirect_ttl, Duration::from_secs(20 * 60));
    assert_eq!(s3.part_size, 8 << 20);
    assert!(s3.ca_pem.is_some() && s3.credentials.is_some() && s3.allow_http);
    let cluster = c.cluster.expect("the cluster table is read");
    assert_eq!(cluster.advertise.as_str(), "http://10.0.0.5:5480/");
    assert_eq!(cluster.lease_ttl, Duration::from_secs(6));
}

#[test]
fn cluster_table_mistakes_name_their_key() {
    let s3 = "[storage.s3]\nbucket = \"b-1\"\n";
    let ok = "listen = \"127.0.0.1:5480\"\nadvertise = \"http://127.0.0.1:5480\"\n\
              secret = \"sixteen-bytes-or-more\"\n";
    let cases = [
        (
            s3,
            "listen = \"127.0.0.1:5480\"\nsecret = \"sixteen-bytes-or-more\"\n",
            "cluster.advertise",
        ),
        (
            s3,
            "advertise = \"http://127.0.0.1:5480\"\nsecret = \"sixteen-bytes-or-more\"\n",
            "cluster.listen",
        ),
        (
            s3,
            "listen = \"127.0.0.1:5480\"\nadvertise = \"http://127.0.0.1:5480\"\n",
            "cluster.secret",
        ),
        (
            s3,
            "listen = \"127.0.0.1:5480\"\nadvertise = \"http://127.0.0.1:5480\"\nsecret = \"short\"\n",
            "cluster.secret",
        ),
        (
            s3,
            "listen = \"127.0.0.1:5480\"\nadvertise = \"https://h:1/x\"\nsecret = \"sixteen-bytes-or-more\"\n",
            "cluster.advertise",
        ),
        (
            s3,
            "listen = \"127.0.0.1:5000\"\nadvertise = \"http://127.0.0.1:5000\"\nsecret = \"sixteen-bytes-or-more\"\n",
            "cluster.listen",
        ),
        ("", ok, "storage.s3"),
    ];
    for (storage, cluster, key) in cases {
        let text = format!(
            "{storage}[[listener]]\naddr = \"127.0.0.1:5000\"\n[cluster]\n{cluster}\
             [[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n"
        );
        let e = Config::from_toml(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{cluster}: {e}");
    }
    let text = format!(
        "{s3}[[listener]]\naddr = \"127.0.0.1:5000\"\n[cluster]\n{ok}lease_ttl = \"2s\"\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n"
    );
    let c = Config::from_toml(&text, Path::new("/")).unwrap();
    assert_eq!(c.cluster.unwrap().lease_ttl, Duration::from_secs(2));
}

#[test]
fn s3_table_mistakes_name_their_key() {
    let cases = [
        (
            "endpoint = \"http://127.0.0.1:8333\"",
            "storage.s3.endpoint",
        ),
        ("bucket = \"Bad_Bucket\"", "storage.s3.bucket"),
        ("prefix = \"a/../b\"", "storage.s3.prefix"),
        ("access_key_id = \"x\"", "storage.s3.secret_access_key"),
        ("redirect_ttl = \"8d\"", "storage.s3.redirect_ttl"),
        ("part_size = \"1MiB\"", "storage.s3.part_size"),
        ("endpoint = \"ftp://x\"", "storage.s3.endpoint"),
    ];
    for (line, key) in cases {
        let bucket = if line.starts_with("bucket") {
            ""
        } else {
            "bucket = \"b-1\"\n"
        };
        let text = format!(
            "[storage.s3]\n{bucket}{line}\n[[listener]]\naddr = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n"
        );
        let e = Config::from_toml(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{line}: {e}");
    }
}

#[test]
fn warm_entries() {
    let base = "[[listener]]\naddr = \"127.0.0.1:0\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n";
    let c = Config::from_toml(
        &format!("[[warm]]\nfile = \"lists/images.txt\"\npin = true\nplatforms = [\"linux/arm64/v8\"]\n{base}"),
        Path::new("/etc/mirrorgate"),
    )
    .unwrap();
    let w = &c.warm[0];
    assert_eq!(
        w.file.as_deref(),
        Some(Path::new("/etc/mirrorgate/lists/images.txt"))
    );
    assert_eq!(w.interval, DEFAULT_WARM_INTERVAL);
    assert!(w.pin);
    assert_eq!(w.platforms[0].to_string(), "linux/arm64/v8");
    assert_eq!(w.concurrency, 2);
    for (bad, key) in [
        ("[[warm]]\n", "warm[0]"),
        (
            "[[warm]]\nimages = [\"a\"]\ninterval = \"0s\"\n",
            "warm[0].interval",
        ),
        (
            "[[warm]]\nimages = [\"a\"]\nplatforms = [\"linux\"]\n",
            "warm[0].platforms",
        ),
        (
            "[[warm]]\nimages = [\"a\"]\nconcurrency = 0\n",
            "warm[0].concurrency",
        ),
        ("[[warm]]\nimages = [\"a\"]\nevery = \"5m\"\n", "every"),
    ] {
        let e = Config::from_toml(&format!("{bad}{base}"), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}

#[test]
fn a_syntax_error_names_its_place_but_never_quotes_the_file() {
    // An unclosed string on a credential's line: the error must not carry
    // the line itself (it reaches logs and the reload outcome).
    let e = err("[[upstream]]\nname = \"a\"\nurl = \"https://a.test\"\npassword = \"hunter2\n");
    assert!(e.starts_with("line 4, column "), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // A URL never carries a password (the status page shows URLs).
    let e = err("[[upstream]]\nname = \"a\"\nurl = \"https://:tok@a.test\"\n");
    assert!(e.contains("upstream[0].url") && !e.contains("tok@"), "{e}");
    let e = err("[server]\nmax_connections = \"s3cr3t\"\n");
    assert!(e.starts_with("line 2, column 19: "), "{e}");
}

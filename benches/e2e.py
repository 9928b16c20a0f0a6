#!/usr/bin/env python3
"""End-to-end benchmark: mirrorgate vs. CNCF distribution in proxy mode vs.
an nginx proxy_cache vs. nginx static files, all on 127.0.0.1, in one run.
Python stdlib only.

Normally started by benches/e2e.sh (which installs the tools, builds the
release binary and cleans up). Everything it starts is recorded in
WORKDIR/pids and stopped by PID when it ends.

Processes (ports BASE..BASE+10, BASE=5800 by default):
  BASE+0  token server (this file, --serve-token): RS256 JWTs, Docker Hub style,
          one log line per token request (counted per account and scope)
  BASE+1  upstream: distribution (docker-registry) over HTTPS, token auth
  BASE+2  mirrorgate, plain HTTP          BASE+3  mirrorgate, TLS (its own CA)
  BASE+4  distribution proxy, plain HTTP  BASE+5  distribution proxy, HTTPS
          (two processes: distribution has one listener per process)
  BASE+6  nginx static, plain HTTP        BASE+7  nginx static, HTTPS
          (serves the same manifest and blob files under the same /v2/ paths)
  BASE+8  upstream-anon: distribution over plain HTTP on the upstream's own
          storage, no auth (what the nginx cache fronts: nginx cannot do the
          token dance itself)
  BASE+9  nginx proxy_cache, plain HTTP   BASE+10 nginx proxy_cache, HTTPS
          (the same nginx process as the static server; one shared cache)

Measurements: cold and warm `skopeo copy docker://... dir:` pulls (HTTPS) next
to a direct pull from the upstream; one cold GET and 8 concurrent cold GETs
of one big blob (upstream GETs counted in the upstream's access log); manifest
HEAD (hey) and GET (wrk) by tag and by digest; cached blob GET throughput
(curl) over HTTPS and plain HTTP; four cached blobs at once (curl -Z) over one
HTTP/2 connection and over four HTTP/1.1 connections; upstream token fetches
per scope; peak and idle RSS from /proc/PID/status; upstream bytes per image
byte; last, bursts of N clients each GETting its own cold blob (placed
straight into the upstream's storage), with peak RSS (VmHWM reset through
/proc/PID/clear_refs), RSS 10 s after, every body hashed by the client and
upstream 2xx GETs per blob.
"""

import argparse
import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse

MiB = 1 << 20
MB = 1e6
IP = "127.0.0.1"
ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json, "
          "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
MT_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SERVICE = "bench-registry"
ISSUER = "bench-token-issuer"
# The token server's accounts: (password, actions granted on every repository)
USERS = {"admin": ("admin", ["pull", "push", "delete", "*"]),
         "mgate": ("mgpass", ["pull"]),      # mirrorgate's upstream credentials
         "dproxy": ("dppass", ["pull"])}     # distribution proxy's upstream credentials

COMMANDS = []


def log(msg):
    print("[e2e %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# =============================================================== token server
def der_read(buf, i):
    tag = buf[i]
    ln = buf[i + 1]
    i += 2
    if ln & 0x80:
        n = ln & 0x7F
        ln = int.from_bytes(buf[i:i + n], "big")
        i += n
    return tag, buf[i:i + ln], i + ln


class RsaKey:
    """An RSA private key from PKCS#1 DER; signs RS256 with plain pow()."""

    def __init__(self, der):
        _, body, _ = der_read(der, 0)
        ints, i = [], 0
        while i < len(body):
            _, v, i = der_read(body, i)
            ints.append(int.from_bytes(v, "big"))
        _, self.n, self.e, self.d, self.p, self.q, self.dp, self.dq, self.qi = ints[:9]
        self.k = (self.n.bit_length() + 7) // 8

    def sign_rs256(self, msg):
        t = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(msg).digest()
        em = b"\x00\x01" + b"\xff" * (self.k - len(t) - 3) + b"\x00" + t
        m = int.from_bytes(em, "big")
        m1, m2 = pow(m, self.dp, self.p), pow(m, self.dq, self.q)
        s = m2 + ((self.qi * (m1 - m2)) % self.p) * self.q
        return s.to_bytes(self.k, "big")


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def serve_token(a):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    key = RsaKey(open(a.sign_key_der, "rb").read())
    cert_der = open(a.sign_cert_der, "rb").read()
    spki = open(a.sign_spki_der, "rb").read()
    s = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
    kid = ":".join(s[i:i + 4] for i in range(0, 48, 4))  # libtrust key id
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def issue(self, method, user, service, scopes):
            granted = USERS[user][1] if user else ["pull"]
            access = []
            for sc in scopes:
                parts = sc.split(":")
                if len(parts) == 3 and parts[0] == "repository":
                    acts = [x for x in parts[2].split(",") if x in granted]
                    access.append({"type": "repository", "name": parts[1], "actions": acts})
            now = int(time.time())
            claims = {"iss": ISSUER, "sub": user or "", "aud": service, "exp": now + a.ttl,
                      "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
            hdr = {"typ": "JWT", "alg": "RS256", "kid": kid, "x5c": [base64.b64encode(cert_der).decode()]}
            signing = (b64url(json.dumps(hdr, separators=(",", ":")).encode()) + "." +
                       b64url(json.dumps(claims, separators=(",", ":")).encode()))
            tok = signing + "." + b64url(key.sign_rs256(signing.encode()))
            with lock:
                print("TOKEN %s account=%s scopes=%s" % (method, user or "anonymous", ",".join(scopes) or "-"),
                      flush=True)
            return tok, now

        def user(self, u, p):
            if u is None:
                return None, True
            if u in USERS and USERS[u][0] == p:
                return u, True
            return None, False

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                return self.send(404, {})
            q = urllib.parse.parse_qs(url.query)
            scopes = [x for s in q.get("scope", []) for x in s.split(" ") if x]
            u = p = None
            h = self.headers.get("Authorization", "")
            if h.lower().startswith("basic "):
                try:
                    u, p = base64.b64decode(h[6:].strip()).decode().split(":", 1)
                except ValueError:
                    u, p = "", ""
            user, ok = self.user(u, p)
            if not ok:
                print("TOKEN GET account=%s denied" % u, flush=True)
                return self.send(401, {"details": "incorrect username or password"})
            tok, now = self.issue("GET", user, (q.get("service") or [""])[0], scopes)
            iso = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.send(200, {"token": tok, "access_token": tok, "expires_in": a.ttl, "issued_at": iso})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(n).decode() if n else "")
            f = lambda k: (form.get(k) or [""])[0]  # noqa: E731
            user = None
            if f("grant_type") == "password":
                user, ok = self.user(f("username"), f("password"))
                if not ok:
                    print("TOKEN POST account=%s denied" % f("username"), flush=True)
                    return self.send(401, {"error": "invalid_grant"})
            tok, now = self.issue("POST", user, f("service"), [x for x in f("scope").split(" ") if x])
            self.send(200, {"access_token": tok, "expires_in": a.ttl, "token_type": "Bearer"})

    host, port = a.listen.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), H)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.tls_cert, a.tls_key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("token server on https://%s kid=%s" % (a.listen, kid), flush=True)
    srv.serve_forever()


# =============================================================== processes
class Procs:
    """Every process started, recorded in WORKDIR/pids; stopped in reverse order."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, argv, env=None, cwd=None):
        out = open(os.path.join(self.work, "logs", name + ".out"), "ab")
        err = open(os.path.join(self.work, "logs", name + ".log"), "ab")
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=e, cwd=cwd)
        out.close()
        err.close()
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write("%d\n" % p.pid)
        self.procs.append((name, p))
        COMMANDS.append(("start " + name, " ".join(shlex.quote(x) for x in argv)))
        return p

    def stop_all(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 5
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                log("%s (pid %d) ignored SIGTERM; SIGKILL" % (name, p.pid))
                p.kill()
                p.wait()


def run(argv, check=True, timeout=600, step=None, quiet=True, env=None):
    s = " ".join(shlex.quote(x) for x in argv)
    if step:
        COMMANDS.append((step, s))
    if not quiet:
        log("$ " + s)
    e = None
    if env:
        e = dict(os.environ)
        e.update(env)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e)
    if check and r.returncode != 0:
        raise SystemExit("command failed (%d): %s\n%s%s" % (r.returncode, s, r.stdout[-3000:], r.stderr[-3000:]))
    return r


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((IP, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_url(url, proc, codes=("200",), timeout=30, extra=()):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit("process for %s exited with %s (see logs)" % (url, proc.returncode))
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", *extra, url],
                           capture_output=True, text=True)
        if r.stdout in codes:
            return
        time.sleep(0.1)
    raise SystemExit("%s did not answer %s within %ds" % (url, codes, timeout))


class Cpu:
    """Whole-machine CPU use between two points, from /proc/stat: every
    process counts (client, upstream, token server, the server under test,
    the kernel's network stack). Shows whether a step was CPU-bound."""

    HZ = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def now():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
        total = sum(v)
        return total - v[3] - v[4], total    # busy, all (minus idle and iowait)

    @classmethod
    def since(cls, mark):
        b0, t0 = mark
        b1, t1 = cls.now()
        return {"busy": (b1 - b0) / cls.HZ, "util": (b1 - b0) / max(1, t1 - t0)}


def proc_cpu(pid):
    """CPU seconds (user + system, all threads) a live process has used."""
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / Cpu.HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith(key + ":"):
                    return int(ln.split()[1])
    except OSError:
        return 0
    return 0


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# =============================================================== images
def make_tar_gz(path_in_tar, payload, level):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(path_in_tar)
        ti.size, ti.mode, ti.mtime = len(payload), 0o644, 1700000000
        tf.addfile(ti, io.BytesIO(payload))
    tar = buf.getvalue()
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=level) as gz:
        gz.write(tar)
    return tar, out.getvalue()


def make_image(outdir, name, layer_sizes, rng):
    """A Docker v2s2 image in skopeo's dir: format. Layers are gzip'd tars of
    random bytes (gzip level 0 for big ones: valid, and fast to make)."""
    os.makedirs(outdir, exist_ok=True)
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        payload = rng.randbytes(size)
        tar, gz = make_tar_gz("bench/%s/layer%d.bin" % (name, i), payload, 0 if size > 4 * MiB else 1)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        hexd = hashlib.sha256(gz).hexdigest()
        with open(os.path.join(outdir, hexd), "wb") as f:
            f.write(gz)
        layers.append({"mediaType": MT_LAYER, "size": len(gz), "digest": "sha256:" + hexd})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
                      "config": {"Cmd": ["/bin/sh"], "Labels": {"bench": name}},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}, indent=2).encode()
    chex = hashlib.sha256(cfg).hexdigest()
    with open(os.path.join(outdir, chex), "wb") as f:
        f.write(cfg)
    man = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                      "config": {"mediaType": MT_CONFIG, "size": len(cfg), "digest": "sha256:" + chex},
                      "layers": layers}, indent=3).encode()
    with open(os.path.join(outdir, "manifest.json"), "wb") as f:
        f.write(man)
    with open(os.path.join(outdir, "version"), "w") as f:
        f.write("Directory Transport Version: 1.1\n")
    return {"dir": outdir, "digest": "sha256:" + hashlib.sha256(man).hexdigest(), "manifest": man,
            "layers": layers, "config": "sha256:" + chex,
            "bytes": sum(x["size"] for x in layers) + len(cfg) + len(man)}


# =============================================================== log accounting
class LogMark:
    def __init__(self, path):
        self.path = path

    def mark(self):
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def since(self, mark):
        try:
            with open(self.path, "rb") as f:
                f.seek(mark)
                return f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    def settle(self, quiet_s=1.0, timeout=30):
        last, t_last, t0 = self.mark(), time.time(), time.time()
        while time.time() - t0 < timeout:
            time.sleep(0.2)
            m = self.mark()
            if m != last:
                last, t_last = m, time.time()
            elif time.time() - t_last >= quiet_s:
                return


def blob_gets(lines, hexd=None):
    """(number of blob GETs, bytes of 200/206 blob GET bodies) in access-log lines."""
    n, nbytes = 0, 0
    for ln in lines:
        m = re.search(r'"GET (\S*/blobs/sha256:([0-9a-f]{64}))\S* HTTP/[\d.]+" (\d{3}) (\d+)', ln)
        if not m or (hexd and m.group(2) != hexd):
            continue
        n += 1
        if m.group(3) in ("200", "206"):
            nbytes += int(m.group(4))
    return n, nbytes



def blob_gets_by_digest(lines, digests):
    """{hex digest: number of blob GETs answered 200/206} in access-log lines, for
    the given hex digests (a first request answered 401 for its token is not a
    download)."""
    want = set(digests)
    out = dict.fromkeys(want, 0)
    for ln in lines:
        m = re.search(r'"GET \S*/blobs/sha256:([0-9a-f]{64})\S* HTTP/[\d.]+" (200|206) ', ln)
        if m and m.group(1) in want:
            out[m.group(1)] += 1
    return out


def place_blobs(root, repo, static, count, size, salt):
    """Writes `count` distinct blobs of `size` bytes straight into a
    distribution filesystem store at `root` (blob data + the repository's
    layer links, which is all a blob GET reads) and hard-links each under
    `static`/<digest> for nginx. One random buffer, a distinct prefix each:
    generating and hashing 4 GiB this way takes seconds. Returns [(hex, size)]."""
    body = os.urandom(size)
    v2 = os.path.join(root, "docker", "registry", "v2")
    os.makedirs(static, exist_ok=True)
    out = []
    for i in range(count):
        head = ("%s/%s/%08d/" % (salt, repo, i)).encode().ljust(64, b"#")
        h = hashlib.sha256(head)
        h.update(memoryview(body)[len(head):])
        hexd = h.hexdigest()
        d = os.path.join(v2, "blobs", "sha256", hexd[:2], hexd)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "data"), "wb") as f:
            f.write(head)
            f.write(memoryview(body)[len(head):])
        ln = os.path.join(v2, "repositories", repo, "_layers", "sha256", hexd)
        os.makedirs(ln, exist_ok=True)
        with open(os.path.join(ln, "link"), "w") as f:
            f.write("sha256:" + hexd)
        os.link(os.path.join(d, "data"), os.path.join(static, "sha256:" + hexd))
        out.append((hexd, size))
    return out


def reset_peak(pids):
    """Resets VmHWM of each process (clear_refs 5), so the next reading is the
    peak of what follows. False if the kernel refuses."""
    ok = True
    for pid in pids:
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def fetch_all(port, paths, expect, timeout=600, hosts=None):
    """GETs every path at once over plain HTTP, one connection and one thread
    each (all released together), hashing every body. `hosts`, when given, is
    an (ip, port) per path instead of IP:`port`. Returns (wall seconds,
    number of bodies that were 200 with the right size and digest, first error)."""
    import http.client
    n = len(paths)
    start = threading.Barrier(n + 1)
    ok = [False] * n
    err = []
    old = threading.stack_size(256 * 1024)

    def one(i):
        buf = bytearray(256 * 1024)
        mv = memoryview(buf)
        try:
            host, p = hosts[i] if hosts else (IP, port)
            c = http.client.HTTPConnection(host, p, timeout=timeout)
            c.connect()
            start.wait()
            c.request("GET", paths[i])
            r = c.getresponse()
            h, total = hashlib.sha256(), 0
            while True:
                k = r.readinto(mv)
                if not k:
                    break
                h.update(mv[:k])
                total += k
            hexd, size = expect[i]
            ok[i] = r.status == 200 and total == size and h.hexdigest() == hexd
            if not ok[i] and not err:
                err.append("%s: %d, %d bytes" % (paths[i], r.status, total))
            c.close()
        except Exception as e:  # noqa: BLE001 -- counted, reported
            if not err:
                err.append("%s: %r" % (paths[i], e))
            try:
                start.abort()
            except threading.BrokenBarrierError:
                pass

    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    threading.stack_size(old)
    try:
        start.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    for t in ts:
        t.join()
    return time.monotonic() - t0, sum(ok), (err[0] if err else "")


# =============================================================== the bench
class Bench:
    def __init__(self, a):
        self.a = a
        self.w = a.workdir
        for d in ("logs", "conf", "pki/trust", "images", "static", "pulls", "upstream", "mg-data", "dp-http",
                  "dp-https", "nginx/tmp"):
            os.makedirs(os.path.join(self.w, d), exist_ok=True)
        self.procs = Procs(self.w)
        b = a.port_base
        self.port = {"token": b, "up": b + 1, "mg_http": b + 2, "mg_tls": b + 3, "dp_http": b + 4,
                     "dp_tls": b + 5, "ng_http": b + 6, "ng_tls": b + 7, "up_anon": b + 8, "nc_http": b + 9, "nc_tls": b + 10}
        self.pki = os.path.join(self.w, "pki")
        self.cabundle = os.path.join(self.pki, "all-ca.pem")
        self.up_log = LogMark(os.path.join(self.w, "logs", "upstream.out"))
        self.anon_log = LogMark(os.path.join(self.w, "logs", "upstream-anon.out"))
        self.tok_log = LogMark(os.path.join(self.w, "logs", "token.out"))
        self.tag = a.run_id
        self.R = {}
        self.pids = {}

    def url(self, who, tls):
        key = {"mg": "mg", "dp": "dp", "ng": "ng", "nc": "nc", "up": "up"}[who]
        if who == "up":
            return "https://%s:%d" % (IP, self.port["up"])
        return "%s://%s:%d" % ("https" if tls else "http", IP, self.port[key + ("_tls" if tls else "_http")])

    # ---------------------------------------------------------------- setup
    def setup_pki(self):
        p = self.pki
        cmds = [
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", p + "/ca.key", "-out", p + "/ca.crt", "-days", "2", "-subj", "/CN=mirrorgate e2e bench CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", p + "/server.key", "-out", p + "/server.csr", "-subj", "/CN=127.0.0.1"],
        ]
        for c in cmds:
            run(c)
        with open(p + "/server.ext", "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run(["openssl", "x509", "-req", "-in", p + "/server.csr", "-CA", p + "/ca.crt", "-CAkey", p + "/ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", p + "/server.ext", "-out", p + "/server.crt"])
        # token signing key: RSA (RS256), self-signed; distribution trusts it via rootcertbundle
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p + "/token.key",
             "-out", p + "/token.crt", "-days", "2", "-subj", "/CN=bench token signer"])
        run(["openssl", "rsa", "-in", p + "/token.key", "-traditional", "-outform", "DER", "-out", p + "/token.key.der"])
        run(["openssl", "x509", "-in", p + "/token.crt", "-outform", "DER", "-out", p + "/token.crt.der"])
        run(["openssl", "x509", "-in", p + "/token.crt", "-noout", "-pubkey", "-out", p + "/token.pub"])
        run(["openssl", "pkey", "-pubin", "-in", p + "/token.pub", "-outform", "DER", "-out", p + "/token.spki.der"])
        # mirrorgate's own CA (what its TLS listener issues leaves from)
        run([self.a.bin, "ca", "init", "--dir", self.w + "/mg-ca"], step="mirrorgate ca init")
        shutil.copy(p + "/ca.crt", p + "/trust/bench-ca.crt")
        shutil.copy(self.w + "/mg-ca/ca.crt", p + "/trust/mirrorgate-ca.crt")
        with open(self.cabundle, "w") as f:
            f.write(open(p + "/ca.crt").read() + open(self.w + "/mg-ca/ca.crt").read())
        with open(self.w + "/conf/policy.json", "w") as f:
            f.write('{"default":[{"type":"insecureAcceptAnything"}]}\n')
        with open(self.w + "/conf/registries.conf", "w") as f:
            f.write("# empty: no search registries, no mirrors\n")
        with open(self.w + "/conf/auth.json", "w") as f:
            f.write('{"auths":{}}\n')

    def make_images(self):
        a = self.a
        rng = random.Random(a.run_id)
        small = [int(float(x) * MiB) for x in a.small_mib.split(",")]
        big = int(a.big_mib * MiB)
        t = time.time()
        d = self.w + "/images"
        self.img = {
            "small": make_image(d + "/small", "small", small, rng),
            "big": make_image(d + "/big", "big", [big], rng),
            # two cold blobs: one for a single cold GET, one for the concurrent cold GETs
            "cold": make_image(d + "/cold", "cold", [big, big], rng),
        }
        # more fresh images for the cold-pull rounds after the first
        for i in range(2, a.cold_rounds + 1):
            self.img["small-%d" % i] = make_image(d + "/small-%d" % i, "small-%d" % i, small, rng)
            self.img["big-%d" % i] = make_image(d + "/big-%d" % i, "big-%d" % i, [big], rng)
        log("images generated in %.1fs (small %s MiB, big %.0f MiB)" % (time.time() - t, a.small_mib, a.big_mib))

    def registry_yaml(self, name, port, root, tls, extra, level):
        t = ""
        if tls:
            t = "  tls:\n    certificate: %s/server.crt\n    key: %s/server.key\n" % (self.pki, self.pki)
        y = ("version: 0.1\nlog:\n  level: %s\n  formatter: text\n  accesslog:\n    disabled: false\n"
             "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"
             "  cache:\n    blobdescriptor: inmemory\n  maintenance:\n    uploadpurging:\n      enabled: false\n"
             "http:\n  addr: %s:%d\n  secret: e2e-%s\n%s"
             "health:\n  storagedriver:\n    enabled: false\n%s") % (level, root, IP, port, name, t, extra)
        path = "%s/conf/%s.yml" % (self.w, name)
        with open(path, "w") as f:
            f.write(y)
        return path

    def start_all(self):
        a, P, w = self.a, self.port, self.w
        for name, port in P.items():
            if not port_free(port):
                raise SystemExit("port %d (%s) on %s is in use; set BENCH_PORT_BASE" % (port, name, IP))
        # token server
        tp = self.procs.start("token", [sys.executable, os.path.abspath(__file__), "--serve-token",
                                        "--listen", "%s:%d" % (IP, P["token"]), "--tls-cert", self.pki + "/server.crt",
                                        "--tls-key", self.pki + "/server.key", "--ttl", str(a.token_ttl),
                                        "--sign-key-der", self.pki + "/token.key.der",
                                        "--sign-cert-der", self.pki + "/token.crt.der",
                                        "--sign-spki-der", self.pki + "/token.spki.der"])
        wait_url("https://%s:%d/token?service=x" % (IP, P["token"]), tp, extra=("--cacert", self.cabundle))
        # upstream registry, token auth
        auth = ("auth:\n  token:\n    realm: https://%s:%d/token\n    service: %s\n    issuer: %s\n"
                "    rootcertbundle: %s/token.crt\n") % (IP, P["token"], SERVICE, ISSUER, self.pki)
        y = self.registry_yaml("upstream", P["up"], w + "/upstream", True, auth, "warn")
        up = self.procs.start("upstream", ["docker-registry", "serve", y])
        self.pids["up"] = up.pid
        wait_url(self.url("up", True) + "/v2/", up, codes=("401",), extra=("--cacert", self.cabundle))
        # the same storage, anonymous, plain HTTP: the origin behind the nginx proxy_cache peer
        y = self.registry_yaml("upstream-anon", P["up_anon"], w + "/upstream", False, "", "warn")
        ua = self.procs.start("upstream-anon", ["docker-registry", "serve", y])
        wait_url("http://%s:%d/v2/" % (IP, P["up_anon"]), ua)
        # distribution proxy: plain HTTP and HTTPS (one listener per process, so two caches)
        env = {"SSL_CERT_FILE": self.pki + "/ca.crt"}
        for key, tls in (("dp_http", False), ("dp_tls", True)):
            prox = ("proxy:\n  remoteurl: %s\n  username: dproxy\n  password: %s\n"
                    % (self.url("up", True), USERS["dproxy"][0]))
            y = self.registry_yaml(key, P[key], w + ("/dp-https" if tls else "/dp-http"), tls, prox, "info")
            p = self.procs.start(key, ["docker-registry", "serve", y], env=env)
            self.pids[key] = p.pid
            wait_url(self.url("dp", tls) + "/v2/", p, extra=("--cacert", self.cabundle))
        # mirrorgate
        cfg = w + "/conf/mirrorgate.toml"
        with open(cfg, "w") as f:
            f.write(f"""# generated by benches/e2e.py
[storage]
root = "{w}/mg-data"

[cache]
tag_ttl = "5m"

[tls]
ca_dir = "{w}/mg-ca"

[[listener]]
addr = "{IP}:{P['mg_http']}"

[[listener]]
addr = "{IP}:{P['mg_tls']}"
tls = true

[[upstream]]
name = "bench"
url = "{self.url('up', True)}"
default = true
ca_file = "{self.pki}/ca.crt"
username = "mgate"
password = {{ env = "MG_UPSTREAM_PASSWORD" }}
""")
        run([a.bin, "check-config", cfg], step="mirrorgate check-config",
            env={"MG_UPSTREAM_PASSWORD": USERS["mgate"][0]})
        mg = self.procs.start("mirrorgate", shlex.split(a.mg_wrap) + [a.bin, "serve", "--config", cfg],
                              env=dict({"MG_UPSTREAM_PASSWORD": USERS["mgate"][0], "NO_COLOR": "1",
                                        "RUST_LOG": "info"}, **dict(x.split("=", 1) for x in a.mg_env)))
        self.pids["mg"] = mg.pid
        wait_url(self.url("mg", False) + "/v2/", mg)
        wait_url(self.url("mg", True) + "/v2/", mg, extra=("--cacert", self.cabundle))
        # nginx static over the same files, same /v2/ paths
        ng = w + "/nginx"
        with open(w + "/conf/nginx.conf", "w") as f:
            f.write(f"""# generated by benches/e2e.py: static files, the ceiling for a cache
user root;
daemon off;
worker_processes 2;
pid {ng}/nginx.pid;
error_log {w}/logs/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  default_type application/octet-stream;
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {ng}/tmp/client;
  proxy_temp_path {ng}/tmp/proxy;
  fastcgi_temp_path {ng}/tmp/fastcgi;
  uwsgi_temp_path {ng}/tmp/uwsgi;
  scgi_temp_path {ng}/tmp/scgi;
  ssl_certificate {self.pki}/server.crt;
  ssl_certificate_key {self.pki}/server.key;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  # the nginx proxy_cache peer: a pull-through cache in front of an anonymous
  # registry, keyed like a careful operator would (tags by Accept, short TTL)
  proxy_cache_path {ng}/cache levels=1:2 keys_zone=reg:16m max_size=4g inactive=1d use_temp_path=off;
  upstream origin {{ server {IP}:{P['up_anon']}; keepalive 32; }}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_read_timeout 300s;
  proxy_cache_lock on;
  proxy_cache_lock_timeout 300s;
  proxy_cache_lock_age 300s;
  proxy_ignore_headers Cache-Control Expires Set-Cookie;
  server {{
    listen {IP}:{P['ng_http']};
    root {w}/static;
    location ~ /manifests/ {{ default_type {MT_MANIFEST}; }}
  }}
  server {{
    listen {IP}:{P['ng_tls']} ssl;
    root {w}/static;
    location ~ /manifests/ {{ default_type {MT_MANIFEST}; }}
  }}
  server {{
    listen {IP}:{P['nc_http']};
    listen {IP}:{P['nc_tls']} ssl;
    location /v2/ {{
      proxy_pass http://origin;
      proxy_cache reg;
      proxy_cache_key "$uri|$http_accept";
      proxy_cache_valid 200 7d;
    }}
    location ~ /manifests/sha256:[0-9a-f]+$ {{  # by digest: immutable
      proxy_pass http://origin;
      proxy_cache reg;
      proxy_cache_key "$uri|$http_accept";
      proxy_cache_valid 200 7d;
    }}
    location ~ /manifests/[^/]+$ {{  # by tag: revalidated after 60 s
      proxy_pass http://origin;
      proxy_cache reg;
      proxy_cache_key "$uri|$http_accept";
      proxy_cache_valid 200 60s;
    }}
  }}
}}
""")
        run(["nginx", "-t", "-q", "-p", ng, "-e", w + "/logs/nginx-error.log", "-c", w + "/conf/nginx.conf"])
        p = self.procs.start("nginx", ["nginx", "-p", ng, "-e", w + "/logs/nginx-error.log", "-c",
                                       w + "/conf/nginx.conf"])
        self.pids["ng"] = p.pid
        wait_url(self.url("ng", False) + "/", p, codes=("200", "403", "404"))
        wait_url(self.url("ng", True) + "/", p, codes=("200", "403", "404"), extra=("--cacert", self.cabundle))
        wait_url(self.url("nc", False) + "/v2/", p)
        wait_url(self.url("nc", True) + "/v2/", p, extra=("--cacert", self.cabundle))
        time.sleep(1.0)
        # idle RSS right after start (nothing served yet)
        self.R["rss_start"] = {k: self.rss(k)[0] for k in ("mg", "dp", "ng")}
        log("started: token %d, upstream %d, mirrorgate %d, dist-proxy %d/%d, nginx %d"
            % (tp.pid, up.pid, mg.pid, self.pids["dp_http"], self.pids["dp_tls"], p.pid))

    def rss(self, who):
        """(VmRSS, VmHWM) in KiB; dist-proxy: the larger of its two processes; nginx: master + workers."""
        if who == "mg":
            pids = [self.pids["mg"]]
        elif who == "dp":
            r = [(kb(p, "VmRSS"), kb(p, "VmHWM")) for p in (self.pids["dp_http"], self.pids["dp_tls"])]
            return max(x[0] for x in r), max(x[1] for x in r)
        else:
            pids = [self.pids["ng"]] + children(self.pids["ng"])
        return sum(kb(p, "VmRSS") for p in pids), sum(kb(p, "VmHWM") for p in pids)

    def rss_note(self, phase):
        """Logs mirrorgate's memory after each phase (where a peak comes from)."""
        rss, hwm = self.rss("mg")
        self.R.setdefault("rss_phases", []).append((phase, rss, hwm))
        log("  mirrorgate RSS after %s: %.1f MiB (peak so far %.1f MiB)" % (phase, rss / 1024, hwm / 1024))

    def seed(self):
        t = time.time()
        for name in self.img:
            run(self.skopeo("copy", "-q", "--preserve-digests", "--dest-cert-dir", self.pki + "/trust",
                            "--dest-creds", "admin:admin", "dir:" + self.img[name]["dir"],
                            "docker://%s:%d/library/%s:%s" % (IP, self.port["up"], name, self.tag)),
                step="seed upstream")
        # nginx serves the same bytes under the same paths
        st = self.w + "/static/v2/library"
        for name in ("small", "big", "cold"):
            im = self.img[name]
            md = "%s/%s/manifests" % (st, name)
            bd = "%s/%s/blobs" % (st, name)
            os.makedirs(md, exist_ok=True)
            os.makedirs(bd, exist_ok=True)
            for ref in (self.tag, im["digest"]):
                with open(os.path.join(md, ref), "wb") as f:
                    f.write(im["manifest"])
            for lay in im["layers"]:
                os.link(os.path.join(im["dir"], lay["digest"].split(":")[1]), os.path.join(bd, lay["digest"]))
        # four big blobs for the "4 at once" figures, straight into the upstream's storage
        self.img["multi"] = place_blobs(self.w + "/upstream", "library/multi", st + "/multi/blobs", 4,
                                        int(self.a.big_mib * MiB), self.tag)
        log("seeded upstream in %.1fs" % (time.time() - t))

    def skopeo(self, *args):
        # env: REGISTRY_AUTH_FILE would be read by docker-registry as a config override, so only skopeo
        # gets it (never ~/.docker or /run/containers credentials)
        return ["env", "REGISTRY_AUTH_FILE=" + self.w + "/conf/auth.json", "skopeo", "--policy", self.w + "/conf/policy.json", "--registries-conf",
                self.w + "/conf/registries.conf", *args]

    # ---------------------------------------------------------------- measurements
    def tokens(self, mark):
        """{account: {scope: n}} of token requests since mark."""
        out = {}
        for ln in self.tok_log.since(mark):
            m = re.match(r"TOKEN \S+ account=(\S+) scopes=(\S+)", ln)
            if m:
                acc = out.setdefault(m.group(1), {})
                acc[m.group(2)] = acc.get(m.group(2), 0) + 1
        return out

    def pull(self, who, name, step):
        dest = self.w + "/pulls/%s-%s" % (who, name)
        shutil.rmtree(dest, ignore_errors=True)
        if who == "up":
            ref = "docker://%s:%d/library/%s:%s" % (IP, self.port["up"], name, self.tag)
        else:
            ref = "docker://%s:%d/library/%s:%s" % (IP, self.port[who + "_tls"], name, self.tag)
        cmd = self.skopeo("copy", "-q", "--src-cert-dir", self.pki + "/trust", ref, "dir:" + dest)
        t0 = time.monotonic()
        run(cmd, step=step, timeout=600)
        dt = time.monotonic() - t0
        got = "sha256:" + hashlib.sha256(open(dest + "/manifest.json", "rb").read()).hexdigest()
        if got != self.img[name]["digest"]:
            raise SystemExit("%s pull of %s: manifest digest %s, want %s" % (who, name, got, self.img[name]["digest"]))
        for lay in self.img[name]["layers"]:
            hexd = lay["digest"].split(":")[1]
            if os.path.getsize(os.path.join(dest, hexd)) != lay["size"]:
                raise SystemExit("%s pull of %s: layer %s has the wrong size" % (who, name, hexd))
        shutil.rmtree(dest, ignore_errors=True)
        return dt

    def measure_pulls(self):
        rounds = self.a.cold_rounds
        log("cold pulls (skopeo copy over HTTPS), %d round(s) of fresh images, interleaved, median: "
            "direct upstream, mirrorgate, dist-proxy" % rounds)
        times = {who: {"small": [], "big": []} for who in ("up", "mg", "dp")}
        cpu = {who: {"small": [], "big": []} for who in ("up", "mg", "dp")}
        acct = {who: {"reqs": 0, "blob_gets": 0, "up_bytes": 0, "img_bytes": 0} for who in ("up", "mg", "dp")}
        for r in range(1, rounds + 1):
            for who in ("up", "mg", "dp"):
                os.sync()  # nobody's fsync pays for an earlier step's dirty pages
                m = self.up_log.mark()
                for kind in ("small", "big"):
                    name = kind if r == 1 else "%s-%d" % (kind, r)
                    srv = {"mg": self.pids["mg"], "dp": self.pids["dp_tls"]}.get(who)
                    c0, u0 = Cpu.now(), proc_cpu(self.pids["up"])
                    s0, k0 = proc_cpu(srv) if srv else 0.0, resource.getrusage(resource.RUSAGE_CHILDREN)
                    times[who][kind].append(self.pull(who, name, "cold pull %s via %s" % (name, who)))
                    k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    c = Cpu.since(c0)
                    c["client"] = (k1.ru_utime + k1.ru_stime) - (k0.ru_utime + k0.ru_stime)
                    c["upstream"] = proc_cpu(self.pids["up"]) - u0
                    c["server"] = (proc_cpu(srv) - s0) if srv else 0.0
                    cpu[who][kind].append(c)
                self.up_log.settle(quiet_s=1.0)   # background fills (distribution fetches blobs twice)
                lines = self.up_log.since(m)
                nblob, ubytes = blob_gets(lines)
                names = ("small", "big") if r == 1 else ("small-%d" % r, "big-%d" % r)
                acct[who]["reqs"] += len(lines)
                acct[who]["blob_gets"] += nblob
                acct[who]["up_bytes"] += ubytes
                acct[who]["img_bytes"] += sum(sum(x["size"] for x in self.img[n]["layers"]) for n in names)
        for who in ("up", "mg", "dp"):
            t = times[who]
            self.R["cold_" + who] = dict(acct[who], small=statistics.median(t["small"]),
                                         big=statistics.median(t["big"]))
            for kind in ("small", "big"):
                self.R["cold_cpu_%s_%s" % (who, kind)] = {
                    k: statistics.median(c[k] for c in cpu[who][kind])
                    for k in ("busy", "util", "client", "upstream", "server")}
            log("  %s: small %s big %s; upstream %d reqs, %d blob GETs, %.2fx image bytes"
                % (who, "/".join("%.3f" % x for x in t["small"]), "/".join("%.3f" % x for x in t["big"]),
                   acct[who]["reqs"], acct[who]["blob_gets"], acct[who]["up_bytes"] / acct[who]["img_bytes"]))
        log("warm pulls (%d runs each, median)" % self.a.warm_runs)
        for who in ("up", "mg", "dp"):
            res = {}
            for name in ("small", "big"):
                ts = [self.pull(who, name, "warm pull %s via %s" % (name, who) if i == 0 else None)
                      for i in range(self.a.warm_runs)]
                res[name] = statistics.median(ts)
            self.R["warm_" + who] = res
            log("  %s: small %.3fs big %.3fs" % (who, res["small"], res["big"]))

    def curl_get(self, url, extra=(), step=None):
        cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", "600", "-w",
               "%{http_code} %{size_download} %{time_total} %{speed_download}", "--cacert", self.cabundle,
               *extra, url]
        r = run(cmd, step=step)
        code, size, total, speed = r.stdout.split()
        return code, int(size), float(total), float(speed)

    def upstream_token(self, repo):
        r = run(["curl", "-sf", "--cacert", self.cabundle,
                 "https://%s:%d/token?service=%s&scope=repository:%s:pull" % (IP, self.port["token"], SERVICE, repo)])
        return json.loads(r.stdout)["token"]

    def measure_cold_gets(self):
        n = self.a.concurrency
        im = self.img["cold"]
        single, coal = im["layers"][0], im["layers"][1]
        log("cold blob GETs over plain HTTP: one client, then %d concurrent clients (%.0f MiB blob)"
            % (n, single["size"] / MiB))
        # direct upstream GET of the same blob (always "warm": it is the origin)
        tok = self.upstream_token("library/cold")
        c0 = Cpu.now()
        code, size, t_up, _ = self.curl_get("%s/v2/library/cold/blobs/%s" % (self.url("up", True), single["digest"]),
                                            ("-H", "Authorization: Bearer " + tok))
        self.R["single_up"] = t_up
        self.R["single_up_cpu"] = Cpu.since(c0)
        for who in ("mg", "dp"):
            base = self.url(who, False)
            # the manifest first, as a client would (and so the token for the scope exists)
            self.curl_get("%s/v2/library/cold/manifests/%s" % (base, self.tag), ("-H", "Accept: " + ACCEPT))
            self.up_log.settle(quiet_s=0.5)
            os.sync()
            m = self.up_log.mark()
            c0 = Cpu.now()
            code, size, t1, _ = self.curl_get("%s/v2/library/cold/blobs/%s" % (base, single["digest"]),
                                              step="single cold GET via " + who)
            cpu1 = Cpu.since(c0)
            if code != "200" or size != single["size"]:
                raise SystemExit("%s single cold GET: %s %d bytes" % (who, code, size))
            self.up_log.settle(quiet_s=1.0)
            n1, _ = blob_gets(self.up_log.since(m), single["digest"].split(":")[1])
            os.sync()
            m = self.up_log.mark()
            burl = "%s/v2/library/cold/blobs/%s" % (base, coal["digest"])
            cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", "600", "-w", "%{http_code} %{size_download} %{time_total}",
                   burl]
            COMMANDS.append(("%d concurrent cold GETs via %s" % (n, who), " ".join(cmd) + "   # x%d in parallel" % n))
            t0, c0 = time.monotonic(), Cpu.now()
            ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
            outs = [p.communicate()[0].split() for p in ps]
            wall, cpun = time.monotonic() - t0, Cpu.since(c0)
            ok = sum(1 for o in outs if len(o) == 3 and o[0] == "200" and int(o[1]) == coal["size"])
            self.up_log.settle(quiet_s=1.5)
            nup, ubytes = blob_gets(self.up_log.since(m), coal["digest"].split(":")[1])
            self.R["cold_get_" + who] = {"single": t1, "single_up_gets": n1, "wall": wall, "ok": ok,
                                         "single_cpu": cpu1, "wall_cpu": cpun,
                                         "up_gets": nup, "up_bytes": ubytes, "size": coal["size"]}
            log("  %s: single %.3fs (%d upstream GETs, machine %.2f core-s, %.0f%% busy); x%d wall %.3fs "
                "(%.2f core-s, %.0f%% busy), %d/%d complete, %d upstream GETs (%.2fx blob)"
                % (who, t1, n1, cpu1["busy"], 100 * cpu1["util"], n, wall, cpun["busy"], 100 * cpun["util"],
                   ok, n, nup, ubytes / coal["size"]))

    def warm_up(self):
        """Make sure every server/transport has the manifests and the big blob
        (the two distribution proxies have separate caches)."""
        for who in ("mg", "dp", "nc", "ng"):
            for tls in (False, True):
                base = self.url(who, tls)
                for ref in (self.tag, self.img["small"]["digest"]):
                    code, _, _, _ = self.curl_get("%s/v2/library/small/manifests/%s" % (base, ref),
                                                  ("-H", "Accept: " + ACCEPT))
                    if code != "200":
                        raise SystemExit("%s manifest %s answered %s" % (base, ref, code))
                lay = self.img["big"]["layers"][0]
                blobs = [("library/big", lay["digest"], lay["size"])]
                blobs += [("library/multi", "sha256:" + h, sz) for h, sz in self.img["multi"]]
                for repo, digest, want in blobs:
                    code, size, _, _ = self.curl_get("%s/v2/%s/blobs/%s" % (base, repo, digest))
                    if code != "200" or size != want:
                        raise SystemExit("%s %s blob answered %s (%d bytes)" % (base, repo, code, size))
        self.up_log.settle(quiet_s=1.0)

    def save_output(self, cmd, out):
        with open(os.path.join(self.w, "logs", "load.txt"), "a") as f:
            f.write("$ %s\n%s\n" % (" ".join(shlex.quote(x) for x in cmd), out))

    def load(self, tool, method, url):
        a = self.a
        if tool == "hey":
            # -host: hey would otherwise send "127.0.0.1:PORT" as the TLS SNI name, which rustls
            # rightly rejects (illegal_parameter); every server gets the same Host/SNI "localhost".
            cmd = ["hey", "-z", "%ds" % a.duration, "-c", str(a.conns), "-m", method, "-host", "localhost",
                   "-H", "Accept: " + ACCEPT, url]
            o = run(cmd, step="load %s %s" % (method, url), timeout=a.duration + 120).stdout
            self.save_output(cmd, o)
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1))
            codes = {c: int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", o)}
            p99 = re.search(r"99% in ([\d.]+) secs", o)
            non2 = sum(v for c, v in codes.items() if not c.startswith("2"))
            errs = 0
            if "Error distribution:" in o:
                errs = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", o.split("Error distribution:")[1], re.M))
            total = sum(codes.values())
            if total == 0:
                rps = 0.0
            return {"rps": rps, "p99_ms": float(p99.group(1)) * 1000 if p99 else None, "non2": non2,
                    "total": total, "errors": errs}
        lua = os.path.join(self.w, "conf", "wrk-%s.lua" % method.lower())
        with open(lua, "w") as f:
            f.write('wrk.method = "%s"\nwrk.headers["Accept"] = "%s"\n' % (method, ACCEPT))
        cmd = ["wrk", "-t%d" % a.wrk_threads, "-c%d" % a.conns, "-d%ds" % a.duration, "--latency", "-s", lua, url]
        o = run(cmd, step="load %s %s" % (method, url), timeout=a.duration + 120).stdout
        self.save_output(cmd, o)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1))
        total = int(re.search(r"(\d+) requests in", o).group(1))
        non2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", o)
        p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\b", o, re.M)
        p99ms = None
        if p99:
            p99ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
        errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", o)
        return {"rps": rps, "p99_ms": p99ms, "non2": int(non2.group(1)) if non2 else 0, "total": total,
                "errors": sum(int(x) for x in errs.groups()) if errs else 0}

    def measure_manifests(self):
        a = self.a
        transports = (True,) if a.quick else (True, False)
        log("manifest load: %d connections, %ds per run, %d interleaved round(s), median (HEAD: hey, GET: wrk)"
            % (a.conns, a.duration, a.rounds))
        for tls in transports:
            for kind, tool, method, ref in (("head_tag", "hey", "HEAD", self.tag),
                                            ("get_tag", "wrk", "GET", self.tag),
                                            ("get_digest", "wrk", "GET", self.img["small"]["digest"])):
                runs = {"mg": [], "dp": [], "nc": [], "ng": []}
                for rnd in range(a.rounds):
                    for who in ("mg", "dp", "nc", "ng"):
                        url = "%s/v2/library/small/manifests/%s" % (self.url(who, tls), ref)
                        m = self.up_log.mark()
                        r = self.load(tool, method, url)
                        time.sleep(0.5)
                        r["up_reqs"] = len(self.up_log.since(m))
                        runs[who].append(r)
                for who, rs in runs.items():
                    rs.sort(key=lambda r: r["rps"])
                    med = dict(rs[len(rs) // 2])
                    med["all_rps"] = [r["rps"] for r in rs]
                    med["errors"] = sum(r["errors"] for r in rs)
                    med["non2"] = sum(r["non2"] for r in rs)
                    self.R["%s_%s_%s" % (kind, "tls" if tls else "http", who)] = med
                    log("  %-10s %-5s %-2s %8.0f req/s  p99 %s ms  non-2xx %d  errors %d  upstream reqs %d  (rounds: %s)"
                        % (kind, "https" if tls else "http", who, med["rps"],
                           "%.2f" % med["p99_ms"] if med["p99_ms"] is not None else "?", med["non2"], med["errors"],
                           med["up_reqs"], "/".join("%.0f" % x for x in med["all_rps"])))

    def measure_throughput(self):
        a = self.a
        lay = self.img["big"]["layers"][0]
        log("cached blob GET throughput (%.0f MiB, curl -> /dev/null, %d interleaved runs, median)"
            % (lay["size"] / MiB, a.tput_runs))
        # Every server over HTTP/1.1 (the same transport: nginx here speaks no HTTP/2); then HTTP/2
        # over TLS for the two that offer it, as Go clients (containerd, dockerd, podman) use it.
        for key, tls, proto, servers in (("tls", True, "--http1.1", ("mg", "dp", "nc", "ng")),
                                         ("http", False, "--http1.1", ("mg", "dp", "nc", "ng")),
                                         ("h2", True, "--http2", ("mg", "dp"))):
            sp = {w: [] for w in servers}
            for i in range(a.tput_runs):
                for who in servers:
                    url = "%s/v2/library/big/blobs/%s" % (self.url(who, tls), lay["digest"])
                    code, size, _, speed = self.curl_get(url, (proto,),
                                                         step=("cached blob GET via %s" % who) if i == 0 else None)
                    if code != "200" or size != lay["size"]:
                        raise SystemExit("%s answered %s (%d bytes)" % (url, code, size))
                    sp[who].append(speed / MB)
            for who, v in sp.items():
                self.R["tput_%s_%s" % (key, who)] = statistics.median(v)
                log("  %-5s %-2s %7.0f MB/s  (runs: %s)" % (key, who, statistics.median(v),
                                                          "/".join("%.0f" % x for x in v)))

    def measure_multi(self):
        """Four cached blobs at once on HTTPS: over one multiplexed HTTP/2
        connection (what containerd and BuildKit do against a TLS mirror) and
        over four HTTP/1.1 connections, aggregate MB/s (total bytes / wall)."""
        a = self.a
        blobs = self.img["multi"]
        total = sum(sz for _, sz in blobs)
        log("4 cached blobs at once over HTTPS (%.0f MiB each; curl -Z, %d interleaved runs, median)"
            % (blobs[0][1] / MiB, a.tput_runs))
        cases = (("h2", "--http2", ("mg", "dp")), ("h1", "--http1.1", ("mg", "dp", "nc", "ng")))
        sp = {(k, w): [] for k, _, ws in cases for w in ws}
        for i in range(a.tput_runs):
            for key, proto, servers in cases:
                for who in servers:
                    cmd = ["curl", "-s", "--cacert", self.cabundle, "--max-time", "600", proto, "-Z",
                           "--parallel-max", "4", "-w", "%{http_code} %{size_download} %{num_connects} %{http_version}\n"]
                    for hexd, _ in blobs:
                        cmd += ["-o", "/dev/null", "%s/v2/library/multi/blobs/sha256:%s" % (self.url(who, True), hexd)]
                    if i == 0:
                        COMMANDS.append(("4 cached blobs at once via %s, %s" % (who, proto), " ".join(cmd)))
                    t0 = time.monotonic()
                    out = run(cmd, step="4 blobs at once via %s %s" % (who, proto)).stdout.split("\n")
                    wall = time.monotonic() - t0
                    res = [x.split() for x in out if x.strip()]
                    conns = sum(int(r[2]) for r in res)
                    if len(res) != 4 or any(r[0] != "200" for r in res) or sum(int(r[1]) for r in res) != total:
                        raise SystemExit("4 blobs at once via %s %s: %s" % (who, proto, out))
                    want_conns, want_ver = (1, "2") if key == "h2" else (4, "1.1")
                    if conns != want_conns or any(r[3] != want_ver for r in res):
                        raise SystemExit("4 blobs at once via %s %s: %d connections, versions %s (want %d, %s)"
                                         % (who, proto, conns, [r[3] for r in res], want_conns, want_ver))
                    sp[(key, who)].append(total / wall / MB)
        for (key, who), v in sp.items():
            self.R["multi_%s_%s" % (key, who)] = statistics.median(v)
            log("  %s %-2s %7.0f MB/s  (runs: %s)" % (key, who, statistics.median(v), "/".join("%.0f" % x for x in v)))

    def measure_burst(self):
        """N clients at once, each GETting its own cold blob (a fleet pulling a
        new image): peak RSS during the burst (VmHWM reset just before), RSS
        10 s after it, every body hashed by the client, upstream GETs per blob."""
        a = self.a
        servers = (("mg", self.port["mg_http"], [self.pids["mg"]], self.up_log),
                   ("dp", self.port["dp_http"], [self.pids["dp_http"]], self.up_log),
                   ("nc", self.port["nc_http"], None, self.anon_log))
        servers = [x for x in servers if x[0] in a.burst_peers.split(",")]
        res = {}
        for n in a.burst_counts:
            repo = "library/burst-%d" % n
            t = time.time()
            blobs = place_blobs(self.w + "/upstream", repo, self.w + "/static/v2/%s/blobs" % repo, n,
                                int(a.burst_mib * MiB), self.tag)
            os.sync()
            log("burst: %d concurrent GETs of %d distinct cold %.0f MiB blobs over plain HTTP (placed in %.1fs)"
                % (n, n, a.burst_mib, time.time() - t))
            for who, port, pids, ulog in servers:
                pids = pids or ([self.pids["ng"]] + children(self.pids["ng"]))
                paths = ["/v2/%s/blobs/sha256:%s" % (repo, h) for h, _ in blobs]
                if who == "mg":
                    COMMANDS.append(("burst of %d via mirrorgate" % n, "python3 benches/e2e.py: fetch_all(%d, "
                                     "['%s', ...])   # %d threads, one connection each" % (port, paths[0], n)))
                self.up_log.settle(quiet_s=0.5)
                os.sync()
                m = ulog.mark()
                before = sum(kb(p, "VmRSS") for p in pids)
                exact = reset_peak(pids)
                peak, threads = [0], [0]
                done = threading.Event()

                def sample():   # the peak of the sum when it is several processes
                    while not done.wait(0.02):
                        peak[0] = max(peak[0], sum(kb(p, "VmRSS") for p in pids))
                        threads[0] = max(threads[0], sum(kb(p, "Threads") for p in pids))

                th = threading.Thread(target=sample, daemon=True)
                th.start()
                c0 = Cpu.now()
                wall, ok, err = fetch_all(port, paths, blobs)
                t_end, cpu = time.monotonic(), Cpu.since(c0)
                done.set()
                th.join()
                hwm = sum(kb(p, "VmHWM") for p in pids)
                if exact and len(pids) == 1:
                    peak[0] = max(peak[0], hwm)
                at_end = sum(kb(p, "VmRSS") for p in pids)
                ulog.settle(quiet_s=1.0)
                time.sleep(max(0.0, t_end + 10.0 - time.monotonic()))
                after = sum(kb(p, "VmRSS") for p in pids)
                gets = blob_gets_by_digest(ulog.since(m), [h for h, _ in blobs])
                r = {"before": before, "peak": peak[0], "end": at_end, "after": after, "wall": wall, "ok": ok,
                     "err": err, "gets_total": sum(gets.values()), "gets_max": max(gets.values()),
                     "gets_min": min(gets.values()), "cpu": cpu, "threads": threads[0]}
                res[(n, who)] = r
                log("  %-2s before %.1f MiB, peak %.1f MiB, at end %.1f MiB, 10 s after %.1f MiB; wall %.2fs; "
                    "%d/%d bodies verified%s; upstream GETs %d (per blob %d..%d); up to %d threads"
                    % (who, before / 1024, peak[0] / 1024, at_end / 1024, after / 1024, wall, ok, n,
                       (" (" + err + ")") if err else "", r["gets_total"], r["gets_min"], r["gets_max"],
                       threads[0]))
        self.R["burst"] = res

    def measure_fanout_floor(self):
        """The machine's floor for the concurrent cold GETs: the same number of
        clients fetching a blob of the same size from nginx static (page cache,
        sendfile), so nothing upstream and no hashing or disk writes."""
        n = self.a.concurrency
        lay = self.img["big"]["layers"][0]
        url = "%s/v2/library/big/blobs/%s" % (self.url("ng", False), lay["digest"])
        cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", "600", "-w", "%{http_code} %{size_download}", url]
        COMMANDS.append(("%d concurrent GETs from nginx static" % n, " ".join(cmd) + "   # x%d in parallel" % n))
        walls, cpus = [], []
        for _ in range(3):
            t0, c0 = time.monotonic(), Cpu.now()
            ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
            outs = [p.communicate()[0].split() for p in ps]
            walls.append(time.monotonic() - t0)
            cpus.append(Cpu.since(c0))
            if any(o != ["200", str(lay["size"])] for o in outs):
                raise SystemExit("nginx static fan-out: %s" % outs)
        self.R["fanout_ng"] = statistics.median(walls)
        self.R["fanout_ng_cpu"] = {k: statistics.median(c[k] for c in cpus) for k in ("busy", "util")}
        log("  %d concurrent GETs from nginx static: %.3fs (runs: %s)"
            % (n, self.R["fanout_ng"], "/".join("%.3f" % x for x in walls)))

    def tls_info(self):
        out = {}
        for who in ("mg", "dp", "ng"):
            r = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % (IP, self.port[who + "_tls"]),
                                "-CAfile", self.cabundle], input="", capture_output=True, text=True, timeout=10)
            m = re.search(r"New, (\S+), Cipher is (\S+)", r.stdout)
            k = re.search(r"Server public key is (\d+) bit", r.stdout)
            out[who] = "%s %s (%s-bit key)" % (m.group(1), m.group(2), k.group(1) if k else "?") if m else "?"
        return out

    def run(self):
        a = self.a
        t_start = time.time()
        self.setup_pki()
        self.make_images()
        self.start_all()
        tok0 = self.tok_log.mark()
        self.seed()
        tok_after_seed = self.tok_log.mark()
        ph = a.only
        if "pulls" in ph:
            self.measure_pulls()
            self.rss_note("pulls")
        if "cold" in ph:
            self.measure_cold_gets()
            self.rss_note("cold GETs")
        if "manifests" in ph or "throughput" in ph:
            self.warm_up()
        if "manifests" in ph:
            self.measure_manifests()
            self.rss_note("manifest load")
        if "throughput" in ph:
            self.measure_throughput()
            self.measure_multi()
            self.rss_note("blob throughput")
        if "cold" in ph:
            self.measure_fanout_floor()
        self.R["tokens"] = self.tokens(tok_after_seed)
        time.sleep(a.idle_wait)
        self.R["rss_end"] = {k: self.rss(k) for k in ("mg", "dp", "ng")}
        # last: it resets the peak-RSS counters the row above reads
        if "burst" in ph:
            self.measure_burst()
        self.R["tls"] = self.tls_info()
        self.R["elapsed"] = time.time() - t_start
        del tok0
        rc = self.report()
        if a.hold:
            log("--hold: everything keeps running for %ds (workdir %s); mirrorgate pid %d, HTTP %s, TLS %s"
                % (a.hold, self.w, self.pids["mg"], self.url("mg", False), self.url("mg", True)))
            time.sleep(a.hold)
        return rc

    # ---------------------------------------------------------------- report
    def report(self):
        a, R = self.a, self.R
        # (metric, mg, dist-proxy, nginx-cache, reference, mg/dp, mg/nc, mg/ref, target, verdict)
        rows = []

        def ratio(x, y):
            return (x / y) if (x is not None and y) else None

        def f_s(x):
            return "%.3f s" % x

        def f_r(x):
            return "-" if x is None else "%.2fx" % x

        def verdict(ok):
            return "n/a" if ok is None else ("PASS" if ok else "FAIL")

        def row(metric, mg, dp="", nc="", ref="", r_dp="", r_nc="", r_ref="", target="", ok=""):
            rows.append((metric, mg, dp, nc, ref, r_dp, r_nc, r_ref, target, ok))

        small_mib = self.img["small"]["bytes"] / MiB
        big_mib = self.img["big"]["bytes"] / MiB

        def f_cpu(c):
            return "%.2f core-s (%.0f%% busy)" % (c["busy"], 100 * c["util"])
        if "cold_mg" in R:
            for name, label in (("small", "cold pull, small image (%.1f MiB), median of %d" % (small_mib, a.cold_rounds)),
                                ("big", "cold pull, big image (%.0f MiB), median of %d" % (big_mib, a.cold_rounds))):
                mg, dp, up = R["cold_mg"][name], R["cold_dp"][name], R["cold_up"][name]
                row(label + " [ref: direct from upstream]", f_s(mg), f_s(dp), "", f_s(up), f_r(ratio(mg, dp)), "",
                    f_r(ratio(mg, up)), "<= 1.1x direct", verdict(mg <= 1.1 * up))
            for name, label in (("small", "warm pull, small image (median)"), ("big", "warm pull, big image (median)")):
                mg, dp, up = R["warm_mg"][name], R["warm_dp"][name], R["warm_up"][name]
                row(label + " [ref: direct]", f_s(mg), f_s(dp), "", f_s(up), f_r(ratio(mg, dp)), "", f_r(ratio(mg, up)))

            for name in ("small", "big"):
                mg, dp, up = (R["cold_cpu_%s_%s" % (w, name)] for w in ("mg", "dp", "up"))
                row("machine CPU, cold pull, %s image [ref: direct]" % name, f_cpu(mg), f_cpu(dp), "", f_cpu(up),
                    f_r(ratio(mg["busy"], dp["busy"])), "", f_r(ratio(mg["busy"], up["busy"])))
            for name in ("small", "big"):
                mg, dp, up = (R["cold_cpu_%s_%s" % (w, name)] for w in ("mg", "dp", "up"))

                def split(c, srv=True):
                    return "%.2f / %.2f%s core-s" % (c["client"], c["upstream"], (" / %.2f" % c["server"]) if srv else "")

                row("CPU by process, cold pull, %s image: skopeo / upstream / server [ref: direct]" % name,
                    split(mg), split(dp), "", split(up, False), f_r(ratio(mg["server"], dp["server"])), "", "")
            mgc, dpc = R["cold_mg"], R["cold_dp"]
            row("upstream bytes / image bytes, cold pulls", "%.2fx" % (mgc["up_bytes"] / mgc["img_bytes"]),
                "%.2fx" % (dpc["up_bytes"] / dpc["img_bytes"]), "",
                "%.2fx" % (R["cold_up"]["up_bytes"] / R["cold_up"]["img_bytes"]), target="1.00x",
                ok=verdict(abs(mgc["up_bytes"] / mgc["img_bytes"] - 1) < 0.01))
            row("upstream requests (blob GETs), cold pulls", "%d (%d)" % (mgc["reqs"], mgc["blob_gets"]),
                "%d (%d)" % (dpc["reqs"], dpc["blob_gets"]), "",
                "%d (%d)" % (R["cold_up"]["reqs"], R["cold_up"]["blob_gets"]))
        if "cold_get_mg" in R:
            mg, dp = R["cold_get_mg"], R["cold_get_dp"]
            size_mib = mg["size"] / MiB
            row("one cold GET, %.0f MiB blob, HTTP [ref: direct HTTPS GET]" % size_mib, f_s(mg["single"]),
                f_s(dp["single"]), "", f_s(R["single_up"]), f_r(ratio(mg["single"], dp["single"])), "",
                f_r(ratio(mg["single"], R["single_up"])))
            n = a.concurrency
            row("%d concurrent cold GETs: upstream GETs" % n, "%d" % mg["up_gets"], "%d" % dp["up_gets"],
                target="exactly 1", ok=verdict(mg["up_gets"] == 1 and mg["ok"] == n))
            row("%d concurrent cold GETs: wall [ref: one cold GET]" % n,
                "%s (%.2fx one)" % (f_s(mg["wall"]), mg["wall"] / mg["single"]),
                "%s (%.2fx one)" % (f_s(dp["wall"]), dp["wall"] / dp["single"]), "", f_s(mg["single"]),
                f_r(ratio(mg["wall"], dp["wall"])), "", f_r(ratio(mg["wall"], mg["single"])), "<= 1.2x one cold GET",
                verdict(mg["wall"] <= 1.2 * mg["single"]))
            row("%d concurrent cold GETs: wall [ref: %d concurrent GETs from nginx static]" % (n, n),
                f_s(mg["wall"]), f_s(dp["wall"]), "", f_s(R["fanout_ng"]), f_r(ratio(mg["wall"], dp["wall"])), "",
                f_r(ratio(mg["wall"], R["fanout_ng"])))
            row("machine CPU, one cold GET [ref: direct HTTPS GET]", f_cpu(mg["single_cpu"]), f_cpu(dp["single_cpu"]),
                "", f_cpu(R["single_up_cpu"]), f_r(ratio(mg["single_cpu"]["busy"], dp["single_cpu"]["busy"])), "",
                f_r(ratio(mg["single_cpu"]["busy"], R["single_up_cpu"]["busy"])))
            # What n clients cost at the least: one mirrored cold GET, plus n-1 more deliveries at what nginx
            # (sendfile from the page cache) and curl spend on each; all cores busy with nothing else.
            floor_cpu = mg["single_cpu"]["busy"] + (n - 1) / n * R["fanout_ng_cpu"]["busy"]
            floor = floor_cpu / (os.cpu_count() or 1)
            row("machine CPU, %d concurrent cold GETs [ref: one cold GET + %d/%d of %d GETs from nginx static]"
                % (n, n - 1, n, n), f_cpu(mg["wall_cpu"]), f_cpu(dp["wall_cpu"]), "", "%.2f core-s" % floor_cpu,
                f_r(ratio(mg["wall_cpu"]["busy"], dp["wall_cpu"]["busy"])), "", f_r(ratio(mg["wall_cpu"]["busy"], floor_cpu)))
            row("%d concurrent cold GETs: wall [ref: CPU floor, that work on %d busy cores]" % (n, os.cpu_count() or 1),
                f_s(mg["wall"]), f_s(dp["wall"]), "", f_s(floor), f_r(ratio(mg["wall"], dp["wall"])), "",
                f_r(ratio(mg["wall"], floor)))
            row("%d concurrent cold GETs: upstream bytes / blob" % n, "%.2fx" % (mg["up_bytes"] / mg["size"]),
                "%.2fx" % (dp["up_bytes"] / dp["size"]), target="1.00x",
                ok=verdict(abs(mg["up_bytes"] / mg["size"] - 1) < 0.01))

        def cell(r):
            s = "%.0f/s" % r["rps"]
            if r["p99_ms"] is not None:
                s += " p99 %.1fms" % r["p99_ms"]
            if r["non2"]:
                s += " (%d non-2xx!)" % r["non2"]
            if r["errors"]:
                s += " (%d errors!)" % r["errors"]
            return s

        if "head_tag_tls_mg" in R:
            for tls in ((True,) if a.quick else (True, False)):
                t = "tls" if tls else "http"
                for kind, label in (("head_tag", "manifest HEAD by tag"), ("get_tag", "manifest GET by tag"),
                                    ("get_digest", "manifest GET by digest")):
                    mg, dp, nc, ng = (R["%s_%s_%s" % (kind, t, w)] for w in ("mg", "dp", "nc", "ng"))
                    row("%s, %s [ref: nginx static file]" % (label, "HTTPS" if tls else "HTTP"), cell(mg), cell(dp),
                        cell(nc), cell(ng), f_r(ratio(mg["rps"], dp["rps"])), f_r(ratio(mg["rps"], nc["rps"])),
                        f_r(ratio(mg["rps"], ng["rps"])), ">= 1.0x nginx cache",
                        verdict(mg["rps"] >= nc["rps"] and mg["non2"] == 0 and mg["errors"] == 0))
        if "tput_tls_mg" in R:
            for tls in (True, False):
                t = "tls" if tls else "http"
                mg, dp, nc, ng = (R["tput_%s_%s" % (t, w)] for w in ("mg", "dp", "nc", "ng"))
                row("cached blob GET %.0f MiB, %s, HTTP/1.1 [ref: nginx static]" % (big_mib, "HTTPS" if tls else "HTTP"),
                    "%.0f MB/s" % mg, "%.0f MB/s" % dp, "%.0f MB/s" % nc, "%.0f MB/s" % ng, f_r(ratio(mg, dp)),
                    f_r(ratio(mg, nc)), f_r(ratio(mg, ng)), ">= 0.9x static", verdict(mg >= 0.9 * ng))
            mg, dp = R["tput_h2_mg"], R["tput_h2_dp"]
            row("cached blob GET %.0f MiB, HTTPS, HTTP/2 [ref: nginx static, HTTPS HTTP/1.1]" % big_mib,
                "%.0f MB/s" % mg, "%.0f MB/s" % dp, "", "%.0f MB/s" % R["tput_tls_ng"], f_r(ratio(mg, dp)), "",
                f_r(ratio(mg, R["tput_tls_ng"])))
        if "multi_h2_mg" in R:
            ng = R["multi_h1_ng"]
            mib = self.img["multi"][0][1] / MiB
            for who, key, label in (("mg", "h2", "HTTP/2, one connection"), ("mg", "h1", "HTTP/1.1, four connections")):
                v = R["multi_%s_%s" % (key, who)]
                dp = R.get("multi_%s_dp" % key)
                nc = R.get("multi_%s_nc" % key)
                target, ok = "", ""
                if key == "h2":
                    target, ok = ">= 0.95x static", verdict(v >= 0.95 * ng)
                row("4 cached blobs at once (%.0f MiB each), HTTPS, %s [ref: nginx static, 4 HTTP/1.1 connections]"
                    % (mib, label), "%.0f MB/s" % v, "%.0f MB/s" % dp, "%.0f MB/s" % nc if nc else "",
                    "%.0f MB/s" % ng, f_r(ratio(v, dp)), f_r(ratio(v, nc)), f_r(ratio(v, ng)), target, ok)
        if "burst" in R:
            B = R["burst"]
            for n in a.burst_counts:
                mg = B[(n, "mg")]
                empty = {"peak": 0, "after": 0, "wall": 0.0, "ok": 0, "gets_total": 0, "gets_min": 0, "gets_max": 0}
                dp, nc = (B.get((n, w), empty) for w in ("dp", "nc"))
                big = n >= 500
                label = "%d concurrent GETs of %d distinct cold %.0f MiB blobs, HTTP" % (n, n, a.burst_mib)

                def mib(r, k):
                    return "%.1f MiB" % (r[k] / 1024)

                row(label + ": peak RSS [nginx: master+workers]", mib(mg, "peak"), mib(dp, "peak"), mib(nc, "peak"),
                    "", f_r(ratio(mg["peak"], dp["peak"])), f_r(ratio(mg["peak"], nc["peak"])), "",
                    "<= 96 MiB" if big else "", verdict(mg["peak"] <= 96 * 1024) if big else "")
                row(label + ": RSS 10 s after [ref: RSS before]", mib(mg, "after"), mib(dp, "after"),
                    mib(nc, "after"), mib(mg, "before"), f_r(ratio(mg["after"], dp["after"])),
                    f_r(ratio(mg["after"], nc["after"])), f_r(ratio(mg["after"], mg["before"])),
                    "<= 32 MiB" if big else "", verdict(mg["after"] <= 32 * 1024) if big else "")
                row(label + ": wall", f_s(mg["wall"]), f_s(dp["wall"]), f_s(nc["wall"]), "",
                    f_r(ratio(mg["wall"], dp["wall"])), f_r(ratio(mg["wall"], nc["wall"])), "")

                def gets(r):
                    return "%d/%d verified, %d GETs (%d..%d per blob)" % (r["ok"], n, r["gets_total"], r["gets_min"],
                                                                         r["gets_max"])

                row(label + ": bodies verified, upstream GETs", gets(mg), gets(dp), gets(nc),
                    target="all verified, 1 GET each",
                    ok=verdict(mg["ok"] == n and mg["gets_min"] == 1 and mg["gets_max"] == 1))
        tk = R["tokens"]

        def tok_cell(acc):
            d = tk.get(acc, {})
            return "%d (%d scopes, max %d/scope)" % (sum(d.values()), len(d), max(d.values()) if d else 0)

        mgt = tk.get("mgate", {})
        row("upstream token fetches, whole run [ref: skopeo direct]", tok_cell("mgate"), tok_cell("dproxy"),
            "0 (anonymous origin)", tok_cell("anonymous"), target="<= 1 per repo scope",
            ok=verdict(bool(mgt) and max(mgt.values()) <= 1))
        (mg_rss, mg_hwm), (dp_rss, dp_hwm), (ng_rss, ng_hwm) = (R["rss_end"][w] for w in ("mg", "dp", "ng"))
        row("peak RSS (VmHWM) [nginx: master+workers, static and cache]", "%.1f MiB" % (mg_hwm / 1024),
            "%.1f MiB" % (dp_hwm / 1024), "%.1f MiB" % (ng_hwm / 1024), "", f_r(ratio(mg_hwm, dp_hwm)),
            f_r(ratio(mg_hwm, ng_hwm)), "", "<= 32 MiB", verdict(mg_hwm <= 32 * 1024))
        st = R["rss_start"]
        row("idle RSS (VmRSS) after start", "%.1f MiB" % (st["mg"] / 1024), "%.1f MiB" % (st["dp"] / 1024),
            "%.1f MiB" % (st["ng"] / 1024), "", f_r(ratio(st["mg"], st["dp"])), f_r(ratio(st["mg"], st["ng"])), "",
            "<= 16 MiB", verdict(st["mg"] <= 16 * 1024))
        row("idle RSS (VmRSS) %.0fs after the load" % a.idle_wait, "%.1f MiB" % (mg_rss / 1024),
            "%.1f MiB" % (dp_rss / 1024), "%.1f MiB" % (ng_rss / 1024), "", f_r(ratio(mg_rss, dp_rss)),
            f_r(ratio(mg_rss, ng_rss)), "", "<= 16 MiB", verdict(mg_rss <= 16 * 1024))

        hdr = ("metric", "mirrorgate", "dist-proxy", "nginx cache", "reference", "mg/dist", "mg/nginx cache",
               "mg/ref", "target", "mg")
        w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
        table = ["| " + " | ".join(hdr[i].ljust(w[i]) for i in range(len(hdr))) + " |",
                 "|" + "|".join("-" * (w[i] + 2) for i in range(len(hdr))) + "|"]
        table += ["| " + " | ".join(str(r[i]).ljust(w[i]) for i in range(len(hdr))) + " |" for r in rows]
        fails = [r[0] for r in rows if r[9] == "FAIL"]

        cpu = "?"
        try:
            cpu = re.search(r"^model name\s*:\s*(.*)$", open("/proc/cpuinfo").read(), re.M).group(1)
        except (OSError, AttributeError):
            pass
        vers = "; ".join(x for x in (
            run(["docker-registry", "--version"], check=False).stdout.strip(),
            run(["nginx", "-v"], check=False).stderr.strip(),
            run(["skopeo", "--version"], check=False).stdout.strip(),
            run(["sh", "-c", "wrk -v 2>&1 | head -1"], check=False).stdout.strip()[:30],
            run([a.bin, "--version"], check=False).stdout.strip()) if x)
        md = ["# mirrorgate end-to-end benchmark%s" % (" (--quick)" if a.quick else ""), "",
              "- date (UTC): %s, run id `%s`, took %.0f s" % (
                  datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), a.run_id, R["elapsed"]),
              "- machine: %d cores (%s), %.0f GiB RAM, kernel %s, load avg at end %s" % (
                  os.cpu_count(), cpu, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30),
                  platform.release(), " ".join(open("/proc/loadavg").read().split()[:3])),
              "- command: `%s`" % (a.command or " ".join(sys.argv)),
              "- versions: %s" % vers,
              "- load: %d connections, %d s per run, median of %d interleaved rounds, wrk -t%d (GET), hey (HEAD); "
              "pulls: skopeo copy over HTTPS; cold GETs: curl over plain HTTP%s"
              % (a.conns, a.duration, a.rounds, a.wrk_threads,
                 ("; mirrorgate env: " + " ".join(a.mg_env)) if a.mg_env else ""),
              "- TLS negotiated: " + "; ".join("%s %s" % (k, v) for k, v in R["tls"].items()),
              "", *table, "",
              "mirrorgate RSS after each phase: " + "; ".join(
                  "%s %.1f MiB (peak %.1f)" % (p, r / 1024, h / 1024) for p, r, h in R.get("rss_phases", [])), "",
              "Targets failed: " + (", ".join(fails) if fails else "none"), ""]
        text = "\n".join(md)
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n## Commands\n\n```\n")
                for step, c in COMMANDS:
                    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
                    f.write("# %s\n%s\n" % (step, c.replace(self.w, "$W").replace(repo + "/", "")))
                f.write("```\n")
        return 0


def main():
    ap = argparse.ArgumentParser(description="mirrorgate end-to-end benchmark (see benches/e2e.sh)",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI size: 16 MiB blobs, 2 s load runs, HTTPS manifests only")
    ap.add_argument("--workdir", help="empty directory for everything (benches/e2e.sh makes one under /tmp)")
    ap.add_argument("--bin", help="the mirrorgate binary")
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("BENCH_PORT_BASE", "5800")))
    ap.add_argument("--small-mib", default=None, help="layer sizes of the small image (default 1,3,5; quick 0.25,0.5,1)")
    ap.add_argument("--big-mib", type=float, default=None, help="size of the big blobs (default 200; quick 16)")
    ap.add_argument("--duration", type=int, default=None, help="seconds per load run (default 5; quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved load rounds per figure, median taken "
                    "(default 3; quick 1)")
    ap.add_argument("--mg-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for mirrorgate (repeatable), e.g. RUST_LOG=warn or MALLOC_ARENA_MAX=1")
    ap.add_argument("--mg-wrap", default="", metavar="COMMAND",
                    help="run mirrorgate under this command prefix, for profiling by hand (e.g. 'heaptrack -o FILE')")
    ap.add_argument("--burst-peers", default="mg,dp,nc", help="who gets the bursts (comma list of mg, dp, nc)")
    ap.add_argument("--conns", type=int, default=32, help="connections per load run")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent cold GETs")
    ap.add_argument("--cold-rounds", type=int, default=None, help="cold pulls per image size, each of a fresh "
                    "image, median taken (default 5; quick 1)")
    ap.add_argument("--warm-runs", type=int, default=None, help="warm pulls per image (default 5; quick 2)")
    ap.add_argument("--tput-runs", type=int, default=None, help="blob GETs per throughput figure (default 5; quick 3)")
    ap.add_argument("--only", default="pulls,cold,manifests,throughput,burst",
                    help="which measurement phases to run (comma list of pulls, cold, manifests, throughput, burst)")
    ap.add_argument("--burst", default=None, help="client counts of the cold bursts, each client its own blob "
                    "(default 100,500; quick 20,50)")
    ap.add_argument("--burst-mib", type=float, default=None, help="size of each burst blob (default 8; quick 1)")
    ap.add_argument("--token-ttl", type=int, default=3600, help="token lifetime (s); longer than the run")
    ap.add_argument("--idle-wait", type=float, default=None, help="seconds idle before the final RSS reading")
    ap.add_argument("--out", default="", help="also write the report (with every command) to this markdown file")
    ap.add_argument("--hold", type=int, default=0, help="keep every process running this many seconds after the "
                    "report, for probing or profiling by hand")
    ap.add_argument("--command", default="", help=argparse.SUPPRESS)
    ap.add_argument("--run-id", default=time.strftime("%Y%m%d%H%M%S"), help=argparse.SUPPRESS)
    # token-server mode (started by the bench itself)
    ap.add_argument("--serve-token", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--listen", help=argparse.SUPPRESS)
    ap.add_argument("--tls-cert", help=argparse.SUPPRESS)
    ap.add_argument("--tls-key", help=argparse.SUPPRESS)
    ap.add_argument("--ttl", type=int, default=3600, help=argparse.SUPPRESS)
    ap.add_argument("--sign-key-der", help=argparse.SUPPRESS)
    ap.add_argument("--sign-cert-der", help=argparse.SUPPRESS)
    ap.add_argument("--sign-spki-der", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_token:
        return serve_token(a)
    if not a.workdir or not a.bin:
        ap.error("--workdir and --bin are required (benches/e2e.sh passes them)")
    q = a.quick
    a.small_mib = a.small_mib or ("0.25,0.5,1" if q else "1,3,5")
    a.big_mib = a.big_mib or (16 if q else 200)
    a.duration = a.duration or (2 if q else 5)
    a.rounds = a.rounds or (1 if q else 3)
    a.cold_rounds = a.cold_rounds or (1 if q else 5)
    a.warm_runs = a.warm_runs or (2 if q else 5)
    a.tput_runs = a.tput_runs or (3 if q else 5)
    a.idle_wait = a.idle_wait if a.idle_wait is not None else (1.0 if q else 5.0)
    a.burst_counts = [int(x) for x in (a.burst or ("20,50" if q else "100,500")).split(",") if x]
    a.burst_mib = a.burst_mib or (1 if q else 8)
    a.only = set(x.strip() for x in a.only.split(",") if x.strip())
    unknown = a.only - {"pulls", "cold", "manifests", "throughput", "burst"}
    if unknown:
        ap.error("--only: unknown phase(s) %s" % ", ".join(sorted(unknown)))
    a.bin = os.path.abspath(a.bin)
    b = Bench(a)

    def on_term(*_):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return b.run()
    finally:
        b.procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

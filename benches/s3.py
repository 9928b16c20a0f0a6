#!/usr/bin/env python3
"""The S3 backend, measured beside its peer on the same S3 server.

One run, everything on 127.0.0.1: SeaweedFS (`weed mini`, from PyPI) as the
S3 server, CNCF distribution (Debian's docker-registry) as the upstream
registry, one image with one big layer. Figures, each the median of
--runs GETs with curl (client time; server CPU from /proc, per GB served):

  mirrorgate, filesystem backend:   cold pull; cached (local disk)
  mirrorgate, S3 backend:           cold pull (streamed while uploaded);
                                    cached from S3 (a fresh mirror, empty
                                    local tier); cached from the local tier;
                                    redirect = true (the client follows 307)
  distribution proxy on S3:         cold pull; cached (through distribution);
                                    cached with redirects (storage.redirect)

Run as root after `cargo build --release`:  python3 benches/s3.py
(`--quick` for a small blob). Prints a markdown table.
"""

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY, SECRET = "mgbench", "mgbenchsecret"
TICK = os.sysconf("SC_CLK_TCK")
WORKDIR = ""


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Procs:
    def __init__(self, workdir):
        self.workdir, self.procs = workdir, {}

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.workdir, name + ".log"), "w")
        e = {**os.environ, **(env or {})}
        # distribution's AWS SDK panics on a CA bundle it cannot load into
        # its transport; the S3 server here is plain HTTP anyway.
        e.pop("AWS_CA_BUNDLE", None)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e)
        self.procs[name] = p
        return p

    def log(self, name):
        with open(os.path.join(self.workdir, name + ".log")) as f:
            return f.read()

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


def wait(what, cond, proc=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            tail = ""
            try:
                with open(os.path.join(WORKDIR, what + ".log")) as f:
                    tail = "".join(f.readlines()[-5:])
            except OSError:
                pass
            sys.exit(f"{what}: the process exited ({proc.returncode})\n{tail}")
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def curl(url, follow=False):
    """Returns (seconds, bytes, sha256 of the body)."""
    argv = ["curl", "-sS", "--fail", "-o", "-", "-w", "%{stderr}%{time_total} %{http_code}"]
    if follow:
        argv.append("-L")
    p = subprocess.run(argv + [url], capture_output=True, check=True)
    t, _code = p.stderr.decode().split()[-2:]
    return float(t), len(p.stdout), hashlib.sha256(p.stdout).hexdigest()


def push_image(base, repo, layer):
    """Pushes one layer, a config and a Docker v2 manifest; returns the layer digest."""
    def put_blob(data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        req = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(req) as r:
            loc = r.headers["Location"]
        if loc.startswith("/"):
            loc = base + loc
        sep = "&" if "?" in loc else "?"
        req = urllib.request.Request(f"{loc}{sep}digest={d}", data=data, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req).close()
        return d
    ld = put_blob(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
    cd = put_blob(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": len(config), "digest": cd},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer), "digest": ld}],
    }).encode()
    req = urllib.request.Request(f"{base}/v2/{repo}/manifests/1", data=manifest, method="PUT",
                                 headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    urllib.request.urlopen(req).close()
    return ld


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 16 MiB layer, 2 runs")
    ap.add_argument("--mib", type=int, default=None, help="layer size (default 256)")
    ap.add_argument("--runs", type=int, default=None, help="GETs per cached figure (default 5)")
    ap.add_argument("--bin", default=os.path.join(REPO, "target/release/mirrorgate"))
    a = ap.parse_args()
    mib = a.mib or (16 if a.quick else 256)
    runs = a.runs or (2 if a.quick else 5)
    weed = subprocess.run(["bash", os.path.join(REPO, "scripts/install-seaweedfs.sh")],
                          capture_output=True, text=True, check=True).stdout.strip()
    global WORKDIR
    w = WORKDIR = tempfile.mkdtemp(prefix="mirrorgate-s3bench.")
    procs = Procs(w)
    try:
        return bench(a, mib, runs, weed, w, procs)
    finally:
        procs.stop_all()
        shutil.rmtree(w, ignore_errors=True)


def bench(a, mib, runs, weed, w, procs):
    p = free_ports(14)
    s3 = f"http://127.0.0.1:{p[6]}"
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    wp = procs.start("weed", [
        weed, "mini", f"-dir={w}/weed", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-bucket=mirrorgate",
        f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
        f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
        f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
        "-master.volumeSizeLimitMB=256"], env=env)
    wait("weed", lambda: "All enabled components are running" in procs.log("weed"), wp)

    # The upstream: distribution on local disk, seeded with the image.
    up_port, mg_port, dist_port = p[10], p[11], p[12]
    up = f"http://127.0.0.1:{up_port}"
    with open(f"{w}/upstream.yml", "w") as f:
        f.write(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {w}/upstream}}\n"
                f"  delete: {{enabled: true}}\nhttp: {{addr: 127.0.0.1:{up_port}}}\n")
    upp = procs.start("upstream", ["docker-registry", "serve", f"{w}/upstream.yml"])
    wait("upstream", lambda: http_ok(f"{up}/v2/"), upp)
    layer = os.urandom(mib << 20)
    digest = push_image(up, "bench/big", layer)
    want = digest.split(":")[1]
    gb = len(layer) / 1e9
    rows = []

    def measure(label, proc, url, n, follow=False):
        times, cpus = [], []
        for _ in range(n):
            c0 = cpu_seconds(proc.pid)
            t, size, h = curl(url, follow)
            cpus.append(cpu_seconds(proc.pid) - c0)
            assert size == len(layer) and h == want, f"{label}: wrong body ({size} bytes)"
            times.append(t)
        t, c = median(times), median(cpus)
        rows.append((label, t, len(layer) / t / 1e6, c / gb))
        print(f"  {label}: {t:.2f} s, {len(layer) / t / 1e6:.0f} MB/s, server CPU {c / gb:.2f} s/GB",
              flush=True)

    def mirror(name, root, s3_prefix=None, extra=""):
        cfg = f"{w}/{name}.toml"
        storage = f'[storage]\nroot = "{root}"\n'
        if s3_prefix:
            storage += (f'[storage.s3]\nbucket = "mirrorgate"\nendpoint = "{s3}"\nprefix = "{s3_prefix}"\n'
                        f'access_key_id = "{KEY}"\nsecret_access_key = "{SECRET}"\nallow_http = true\n{extra}\n')
        with open(cfg, "w") as f:
            f.write(f'{storage}[[listener]]\naddr = "127.0.0.1:{mg_port}"\n'
                    f'[[upstream]]\nname = "docker.io"\nurl = "{up}"\ndefault = true\n')
        proc = procs.start(name, [a.bin, "serve", "--config", cfg], env={"RUST_LOG": "warn"})
        wait(name, lambda: http_ok(f"http://127.0.0.1:{mg_port}/v2/"), proc)
        return proc

    blob = f"http://127.0.0.1:{mg_port}/v2/bench/big/blobs/{digest}"
    print(f"{mib} MiB layer, {runs} runs per cached figure", flush=True)

    m = mirror("mg-fs", f"{w}/mg-fs")
    measure("mirrorgate, filesystem: cold", m, blob, 1)
    measure("mirrorgate, filesystem: cached", m, blob, runs)
    procs.stop("mg-fs")

    m = mirror("mg-s3", f"{w}/mg-s3-a", "bench")
    measure("mirrorgate, S3: cold (streamed while uploaded)", m, blob, 1)
    procs.stop("mg-s3")
    m = mirror("mg-s3", f"{w}/mg-s3-b", "bench")
    measure("mirrorgate, S3: cached, from S3 (empty local tier)", m, blob, 1)
    measure("mirrorgate, S3: cached, from the local tier", m, blob, runs)
    procs.stop("mg-s3")
    m = mirror("mg-s3", f"{w}/mg-s3-c", "bench", "redirect = true")
    measure("mirrorgate, S3 + redirect: cached (client follows 307)", m, blob, runs, follow=True)
    procs.stop("mg-s3")

    def dist(name, redirect):
        y = f"{w}/{name}.yml"
        with open(y, "w") as f:
            f.write(
                "version: 0.1\nlog: {level: warn}\nstorage:\n  s3:\n"
                f"    accesskey: {KEY}\n    secretkey: {SECRET}\n    region: us-east-1\n"
                f"    regionendpoint: {s3}\n    bucket: mirrorgate\n    rootdirectory: /distribution\n"
                "    secure: false\n    v4auth: true\n"
                f"  redirect:\n    disable: {'false' if redirect else 'true'}\n"
                f"http: {{addr: 127.0.0.1:{dist_port}}}\nproxy: {{remoteurl: {up}}}\n")
        proc = procs.start(name, ["docker-registry", "serve", y])
        wait(name, lambda: http_ok(f"http://127.0.0.1:{dist_port}/v2/"), proc)
        return proc

    dblob = f"http://127.0.0.1:{dist_port}/v2/bench/big/blobs/{digest}"
    d = dist("dist", False)
    measure("distribution proxy, S3: cold", d, dblob, 1)
    measure("distribution proxy, S3: cached (through distribution)", d, dblob, runs)
    procs.stop("dist")
    d = dist("dist-redirect", True)
    measure("distribution proxy, S3 + redirect: cached (client follows 307)", d, dblob, runs, follow=True)
    procs.stop("dist-redirect")

    print()
    print(f"| {mib} MiB blob, S3 = SeaweedFS on loopback | client time | throughput | server CPU per GB |")
    print("|---|---|---|---|")
    for label, t, mbs, cpu in rows:
        print(f"| {label} | {t:.2f} s | {mbs:.0f} MB/s | {cpu:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

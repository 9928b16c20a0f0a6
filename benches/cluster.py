#!/usr/bin/env python3
"""Cluster benchmark: concurrent cold GETs of one blob spread over N replicas
that share one S3 bucket, for mirrorgate ([cluster]) and for CNCF
distribution in proxy mode, against the same upstream, on loopback.

Run it through benches/cluster.sh (which builds the binary and installs
SeaweedFS). What it starts: SeaweedFS (`weed mini`, 127.0.0.1 only, telemetry
off), an upstream distribution registry (plain HTTP, filesystem storage, the
blobs written straight into it), N mirrorgate replicas on 127.0.0.11.. (client
listener and internal endpoint each), and N distribution proxies on the same
addresses (s3 storage driver, same bucket, another prefix).

Rows, each on a fresh blob:
- CLIENTS GETs spread evenly over the N replicas: wall time, upstream blob
  GETs, bodies verified;
- CLIENTS/N GETs on one replica (what one replica does alone).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e as E  # noqa: E402  (shared helpers: processes, blob placement, fetching)

SECRET = "bench-cluster-secret-0123456789"
KEY, SKEY, BUCKET = "mgbench", "mgbenchsecret", "bench"


def log(msg):
    print("[cluster %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def wait_port(host, port, proc, timeout=60):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit("process for %s:%d exited with %s (see logs)" % (host, port, proc.returncode))
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("%s:%d did not open within %ds" % (host, port, timeout))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the mirrorgate binary")
    ap.add_argument("--weed", required=True, help="SeaweedFS's weed binary")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--mib", type=int, default=200, help="blob size")
    ap.add_argument("--port-base", type=int, default=5900)
    ap.add_argument("--out", help="also write the table (markdown) here")
    a = ap.parse_args()
    w = a.workdir
    os.makedirs(w + "/logs", exist_ok=True)
    procs = E.Procs(w)
    try:
        table = bench(a, w, procs)
    finally:
        procs.stop_all()
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


def bench(a, w, procs):
    n, P = a.replicas, a.port_base
    ips = ["127.0.0.%d" % (11 + i) for i in range(n)]
    # SeaweedFS
    ports = [P + 20 + i for i in range(10)]
    os.makedirs(w + "/weed", exist_ok=True)
    weed = procs.start("weed", [
        a.weed, "mini", "-dir=" + w + "/weed", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-bucket=" + BUCKET, "-master.volumeSizeLimitMB=256",
        "-master.port=%d" % ports[0], "-master.port.grpc=%d" % ports[1],
        "-volume.port=%d" % ports[2], "-volume.port.grpc=%d" % ports[3],
        "-filer.port=%d" % ports[4], "-filer.port.grpc=%d" % ports[5],
        "-s3.port=%d" % ports[6], "-s3.port.grpc=%d" % ports[7],
        "-admin.port=%d" % ports[8], "-admin.port.grpc=%d" % ports[9]],
        env={"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SKEY})
    s3 = "http://127.0.0.1:%d" % ports[6]
    E.wait_url(s3 + "/", weed, codes=("403", "200", "400"), timeout=60)
    # S3 answers before `-bucket` exists: weed says when it made it (and
    # distribution's S3 driver panics on a missing bucket).
    end = time.time() + 60
    while "All enabled components are running" not in open(w + "/logs/weed.out", errors="replace").read():
        if weed.poll() is not None or time.time() > end:
            raise SystemExit("SeaweedFS did not get ready (see %s/logs/weed.out)" % w)
        time.sleep(0.1)
    log("SeaweedFS at " + s3)
    # the upstream, with the blobs written straight into its storage
    up_port = P
    os.makedirs(w + "/conf", exist_ok=True)
    up_yml = w + "/conf/upstream.yml"
    with open(up_yml, "w") as f:
        f.write("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
                "storage:\n  filesystem:\n    rootdirectory: %s/upstream\n"
                "http:\n  addr: 127.0.0.1:%d\n  secret: bench-up\n" % (w, up_port))
    blobs = E.place_blobs(w + "/upstream", "library/big", w + "/static", 4, a.mib << 20,
                          "cluster-%d" % os.getpid())
    up = procs.start("upstream", ["docker-registry", "serve", up_yml])
    E.wait_url("http://127.0.0.1:%d/v2/" % up_port, up)
    up_log = E.LogMark(w + "/logs/upstream.out")  # the access log is on stdout
    # mirrorgate replicas
    mg = []
    for i, ip in enumerate(ips):
        d = "%s/mg%d" % (w, i)
        os.makedirs(d, exist_ok=True)
        cfg = d + "/mirrorgate.toml"
        with open(cfg, "w") as f:
            f.write(f"""[storage]
root = "{d}/data"
[storage.s3]
bucket = "{BUCKET}"
endpoint = "{s3}"
prefix = "mg/"
access_key_id = "{KEY}"
secret_access_key = "{SKEY}"
allow_http = true
[[listener]]
addr = "{ip}:{P + 1}"
[cluster]
listen = "{ip}:{P + 2}"
advertise = "http://{ip}:{P + 2}"
secret = "{SECRET}"
[[upstream]]
name = "bench"
url = "http://127.0.0.1:{up_port}"
default = true
""")
        p = procs.start("mg%d" % i, [a.bin, "serve", "--config", cfg], env={"RUST_LOG": "warn"})
        wait_port(ip, P + 1, p)
        mg.append((ip, P + 1))
    # distribution proxies on the same bucket
    dp = []
    for i, ip in enumerate(ips):
        yml = "%s/conf/dp%d.yml" % (w, i)
        with open(yml, "w") as f:
            f.write("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
                    "storage:\n  s3:\n    accesskey: %s\n    secretkey: %s\n    region: us-east-1\n"
                    "    regionendpoint: %s\n    bucket: %s\n    secure: false\n    v4auth: true\n"
                    "    rootdirectory: /dp\n  redirect:\n    disable: true\n"
                    "http:\n  addr: %s:%d\n  secret: bench-dp\n"
                    "proxy:\n  remoteurl: http://127.0.0.1:%d\n" % (KEY, SKEY, s3, BUCKET, ip, P + 3, up_port))
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        p = subprocess.Popen(["docker-registry", "serve", yml], stdin=subprocess.DEVNULL,
                             stdout=open(w + "/logs/dp%d.log" % i, "ab"), stderr=subprocess.STDOUT, env=env)
        procs.procs.append(("dp%d" % i, p))
        with open(w + "/pids", "a") as f:
            f.write("%d\n" % p.pid)
        wait_port(ip, P + 3, p)
        dp.append((ip, P + 3))

    rows = []

    def measure(label, servers, clients, blob):
        hexd, size = blob
        path = "/v2/library/big/blobs/sha256:" + hexd
        hosts = [servers[i % len(servers)] for i in range(clients)]
        mark = up_log.mark()
        wall, ok, err = E.fetch_all(0, [path] * clients, [(hexd, size)] * clients, hosts=hosts)
        up_log.settle(quiet_s=1.0)
        gets = E.blob_gets_by_digest(up_log.since(mark), [hexd])[hexd]
        log("%s: wall %.3fs, %d/%d verified, %d upstream GETs %s" % (label, wall, ok, clients, gets, err))
        rows.append((label, wall, ok, clients, gets))
        return wall, gets

    per = a.clients // n
    mg_all = measure("mirrorgate, %d GETs over %d replicas" % (a.clients, n), mg, a.clients, blobs[0])
    mg_one = measure("mirrorgate, %d GETs on one replica" % per, mg[:1], per, blobs[1])
    dp_all = measure("distribution, %d GETs over %d proxies" % (a.clients, n), dp, a.clients, blobs[2])
    dp_one = measure("distribution, %d GETs on one proxy" % per, dp[:1], per, blobs[3])

    out = ["| cold GETs of one %d MiB blob | wall | bodies verified | upstream blob GETs |" % a.mib,
           "|---|---|---|---|"]
    for label, wall, ok, clients, gets in rows:
        out.append("| %s | %.3f s | %d/%d | %d |" % (label, wall, ok, clients, gets))
    out.append("")
    out.append("mirrorgate over %d replicas / on one: wall %.2fx, upstream GETs %d vs %d; "
               "mirrorgate / distribution over %d: wall %.2fx, upstream GETs %d vs %d"
               % (n, mg_all[0] / mg_one[0], mg_all[1], mg_one[1], n, mg_all[0] / dp_all[0], mg_all[1], dp_all[1]))
    return "\n".join(out)


if __name__ == "__main__":
    main()

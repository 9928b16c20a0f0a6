#!/usr/bin/env python3
"""Push benchmark: skopeo pushes into a mirrorgate hosted namespace against
the same pushes into CNCF distribution (Debian's docker-registry), on the
same machine in the same run, both on a local filesystem store over plain
HTTP on 127.0.0.1.

Each round pushes three distinct one-layer images of --mib MiB (so no push
finds its layer already stored), alternating the two registries, and times
each `skopeo copy dir: docker://` as a whole process. Reported: the median
push time and throughput of each, their ratio, and each server's peak
resident memory (VmHWM) over the run. Also a chunked-push figure for
mirrorgate alone: the same layer in 8 MiB PATCHes with curl.

    python3 benches/push.py [--mib 128] [--rounds 3] [--bin target/release/mirrorgate]

Needs skopeo, docker-registry, curl (tests/system/install-deps.sh).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"server exited early: {proc.args}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{url} did not answer")


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(REPO, "target/release/mirrorgate"))
    a = ap.parse_args()
    w = tempfile.mkdtemp(prefix="mirrorgate-push-bench.")
    procs = []
    try:
        imgs = os.path.join(w, "images")
        out = []
        for r in range(a.rounds):
            d = os.path.join(imgs, str(r))
            subprocess.run(
                [sys.executable, os.path.join(REPO, "tests/system/mkimages.py"),
                 "--out", d, "--seed", str(1000 + r), "--big", str(a.mib)],
                check=True, stdout=subprocess.DEVNULL)
            out += [os.path.join(d, f"big{i}") for i in (1, 2, 3)]

        mg_port, reg_port = free_port(), free_port()
        with open(os.path.join(w, "mirrorgate.toml"), "w") as f:
            f.write(f"""[storage]
root = "{w}/mg-data"
[[listener]]
addr = "127.0.0.1:{mg_port}"
[[upstream]]
name = "docker.io"
url = "http://127.0.0.1:9"
default = true
[[hosted]]
name = "local"
anonymous_push = true
""")
        with open(os.path.join(w, "registry.yml"), "w") as f:
            f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {w}/reg-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{reg_port}
""")
        env = dict(os.environ, RUST_LOG="warn")
        mg = subprocess.Popen([a.bin, "serve", "--config", os.path.join(w, "mirrorgate.toml")],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(w, "mg.log"), "w"))
        procs.append(mg)
        reg = subprocess.Popen(["docker-registry", "serve", os.path.join(w, "registry.yml")],
                               stdout=subprocess.DEVNULL, stderr=open(os.path.join(w, "reg.log"), "w"))
        procs.append(reg)
        wait_http(f"http://127.0.0.1:{mg_port}/v2/", mg)
        wait_http(f"http://127.0.0.1:{reg_port}/v2/", reg)
        policy = os.path.join(w, "policy.json")
        with open(policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)

        def push(src, dest):
            t = time.monotonic()
            subprocess.run(["skopeo", "--policy", policy, "copy", "--quiet",
                            "--dest-tls-verify=false", f"dir:{src}", f"docker://{dest}"],
                           check=True, stdout=subprocess.DEVNULL)
            return time.monotonic() - t

        times = {"mirrorgate": [], "distribution": []}
        for i, src in enumerate(out):
            order = [("mirrorgate", f"127.0.0.1:{mg_port}/local/b{i}:1"),
                     ("distribution", f"127.0.0.1:{reg_port}/b{i}:1")]
            if i % 2:
                order.reverse()
            for name, dest in order:
                times[name].append(push(src, dest))

        # Chunked: the layer of a fresh image in 8 MiB PATCHes, then PUT.
        chunked = []
        for r in range(a.rounds):
            d = os.path.join(w, "chunk", str(r))
            subprocess.run(
                [sys.executable, os.path.join(REPO, "tests/system/mkimages.py"),
                 "--out", d, "--seed", str(5000 + r), "--big", str(a.mib)],
                check=True, stdout=subprocess.DEVNULL)
            layer = max((os.path.join(d, "big1", n) for n in os.listdir(os.path.join(d, "big1"))
                         if len(n) == 64), key=os.path.getsize)
            digest = "sha256:" + os.path.basename(layer)
            base = f"http://127.0.0.1:{mg_port}"
            t = time.monotonic()
            loc = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-X", "POST",
                 f"{base}/v2/local/c{r}/blobs/uploads/"],
                check=True, capture_output=True, text=True).stdout
            loc = next(l.split(":", 1)[1].strip() for l in loc.splitlines()
                       if l.lower().startswith("location:"))
            size, step, at = os.path.getsize(layer), 8 << 20, 0
            with open(layer, "rb") as f:
                while at < size:
                    chunk = f.read(step)
                    subprocess.run(
                        ["curl", "-sS", "-f", "-o", "/dev/null", "-X", "PATCH",
                         "-H", f"Content-Range: {at}-{at + len(chunk) - 1}",
                         "-H", "Content-Type: application/octet-stream",
                         "--data-binary", "@-", base + loc],
                        input=chunk, check=True)
                    at += len(chunk)
            subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-X", "PUT",
                            f"{base}{loc}?digest={digest}"], check=True)
            chunked.append(time.monotonic() - t)

        mib = a.mib
        res = {}
        for name, ts in times.items():
            med = statistics.median(ts)
            res[name] = med
            print(f"{name:13s} push {mib} MiB: median {med:.2f} s "
                  f"({mib / med:.0f} MiB/s; min {min(ts):.2f}, max {max(ts):.2f}; n={len(ts)})")
        print(f"ratio mirrorgate/distribution (time): {res['mirrorgate'] / res['distribution']:.2f}")
        med = statistics.median(chunked)
        print(f"mirrorgate    chunked {mib} MiB in 8 MiB PATCHes (curl): median {med:.2f} s "
              f"({mib / med:.0f} MiB/s; n={len(chunked)})")
        print(f"peak RSS: mirrorgate {vm_hwm(mg.pid) / 2**20:.1f} MiB, "
              f"distribution {vm_hwm(reg.pid) / 2**20:.1f} MiB")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()

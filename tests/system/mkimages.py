#!/usr/bin/env python3
"""Deterministic test-image generator for tests/system/run.sh (stdlib only).

Writes container images in skopeo's ``dir:`` transport format, one directory
per image under OUT:

    OUT/<image>/version               "Directory Transport Version: 1.1\\n"
    OUT/<image>/manifest.json         the (top-level) manifest, byte-exact
    OUT/<image>/<hex>                 every blob (config, layers), named by sha256 hex
    OUT/<image>/<hex>.manifest.json   multi-arch only: each per-platform manifest

That is exactly what ``skopeo copy --all docker://... dir:OUT`` produces, so
``skopeo copy --all --preserve-digests dir:OUT/<image> docker://...`` pushes
the manifests unchanged (same digests).

Images:
    small      Docker v2 schema 2 manifest, linux/amd64, 3 gzip'd tar layers
    small-oci  the same config and layers under an OCI image manifest
    multi      Docker manifest list: linux/amd64 + linux/arm64/v8 (Docker manifests)
    multi-oci  OCI image index:      linux/amd64 + linux/arm64/v8 (OCI manifests)
    alpine     a one-layer Docker v2s2 image (stand-in for library/alpine)
    big1-3     only with --big MIB: one-layer Docker v2s2 images whose layer
               holds MIB MiB (for killing a mirror in the middle of a pull)

Layers are valid gzip'd tars of random bytes (containerd unpacks them); each
config's rootfs.diff_ids are the sha256 of the uncompressed tars. Output is a
pure function of --seed (gzip mtime 0, fixed tar headers), so digests are the
same on every run with the same zlib.

Prints a JSON summary {image: {"digest", "mediaType", "dir", ...}} on stdout
and writes it to OUT/images.json as well.

usage: mkimages.py --out DIR [--seed N] [--big MIB]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import tarfile

KiB = 1024

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

FIXED_MTIME = 1700000000  # 2023-11-14, inside the tars
CREATED = "2023-11-14T22:13:20Z"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jbytes(obj) -> bytes:
    # Deterministic, human-readable manifest/config bytes.
    return (json.dumps(obj, indent=3, sort_keys=False) + "\n").encode()


def make_tar(files) -> bytes:
    """files: list of (path, bytes). Directories for every parent are added."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        seen = set()
        for path, data in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d in seen:
                    continue
                seen.add(d)
                ti = tarfile.TarInfo(d)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                ti.mtime = FIXED_MTIME
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = "root"
                tf.addfile(ti)
            ti = tarfile.TarInfo(path)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = FIXED_MTIME
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes, level=6) -> bytes:
    buf = io.BytesIO()
    # filename="" and mtime=0: no timestamp or name in the gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=level) as gz:
        gz.write(data)
    return buf.getvalue()


class Blob:
    def __init__(self, data: bytes, media_type: str):
        self.data = data
        self.media_type = media_type
        self.hex = sha256_hex(data)
        self.digest = "sha256:" + self.hex
        self.size = len(data)

    def descriptor(self, media_type=None):
        return {"mediaType": media_type or self.media_type, "size": self.size, "digest": self.digest}


class Platform:
    def __init__(self, arch, variant=None):
        self.os = "linux"
        self.arch = arch
        self.variant = variant

    def as_dict(self):
        d = {"architecture": self.arch, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d

    def label(self):
        return "linux/" + self.arch + ("/" + self.variant if self.variant else "")


class ImageContent:
    """Config + layers of one single-platform image (shared by Docker/OCI flavours)."""

    def __init__(self, rng, name, platform, layer_sizes, level=6):
        self.name = name
        self.platform = platform
        self.layers = []  # gzip'd tar blobs
        diff_ids = []
        history = []
        for i, size in enumerate(layer_sizes, start=1):
            payload = rng.randbytes(size)
            files = [("lab/%s/layer%d.bin" % (name, i), payload)]
            if i == 1:
                files.insert(0, ("lab/%s/platform" % name, (platform.label() + "\n").encode()))
            tar = make_tar(files)
            diff_ids.append("sha256:" + sha256_hex(tar))
            self.layers.append(Blob(gzip_bytes(tar, level), MT_DOCKER_LAYER))
            history.append({"created": CREATED,
                            "created_by": "mkimages.py %s layer %d (%d bytes)" % (name, i, size)})
        cfg = {
            "architecture": platform.arch,
            "os": platform.os,
        }
        if platform.variant:
            cfg["variant"] = platform.variant
        cfg.update({
            "created": CREATED,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"org.mirrorgate.test": name},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        })
        self.config = Blob(jbytes(cfg), MT_DOCKER_CONFIG)

    def manifest(self, oci: bool) -> Blob:
        if oci:
            m = {
                "schemaVersion": 2,
                "mediaType": MT_OCI_MANIFEST,
                "config": self.config.descriptor(MT_OCI_CONFIG),
                "layers": [l.descriptor(MT_OCI_LAYER) for l in self.layers],
            }
            return Blob(jbytes(m), MT_OCI_MANIFEST)
        m = {
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": self.config.descriptor(MT_DOCKER_CONFIG),
            "layers": [l.descriptor(MT_DOCKER_LAYER) for l in self.layers],
        }
        return Blob(jbytes(m), MT_DOCKER_MANIFEST)

    def blobs(self):
        return [self.config] + self.layers


def write_file(path, data: bytes):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_dir(outdir, top: Blob, blobs, instances=()):
    os.makedirs(outdir, exist_ok=True)
    for fn in os.listdir(outdir):  # start clean (stale files from other seeds)
        os.remove(os.path.join(outdir, fn))
    with open(os.path.join(outdir, "version"), "w") as f:
        f.write("Directory Transport Version: 1.1\n")
    write_file(os.path.join(outdir, "manifest.json"), top.data)
    for inst in instances:
        write_file(os.path.join(outdir, inst.hex + ".manifest.json"), inst.data)
    for b in blobs:
        write_file(os.path.join(outdir, b.hex), b.data)


def single(outdir, content: ImageContent, oci: bool):
    m = content.manifest(oci)
    write_dir(outdir, m, content.blobs())
    return {
        "dir": outdir,
        "digest": m.digest,
        "mediaType": m.media_type,
        "platform": content.platform.label(),
        "config": content.config.digest,
        "layers": [l.digest for l in content.layers],
        "size": sum(b.size for b in content.blobs()) + m.size,
    }


def multi(outdir, contents, oci: bool):
    insts = []
    entries = []
    for c in contents:
        m = c.manifest(oci)
        insts.append((c, m))
        entries.append(dict(m.descriptor(), platform=c.platform.as_dict()))
    if oci:
        top = Blob(jbytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}),
                   MT_OCI_INDEX)
    else:
        top = Blob(jbytes({"schemaVersion": 2, "mediaType": MT_DOCKER_LIST, "manifests": entries}),
                   MT_DOCKER_LIST)
    blobs = {}
    for c, _ in insts:
        for b in c.blobs():
            blobs[b.hex] = b
    write_dir(outdir, top, blobs.values(), [m for _, m in insts])
    return {
        "dir": outdir,
        "digest": top.digest,
        "mediaType": top.media_type,
        "instances": {
            c.platform.label(): {
                "digest": m.digest,
                "mediaType": m.media_type,
                "config": c.config.digest,
                "layers": [l.digest for l in c.layers],
            }
            for c, m in insts
        },
        "size": sum(b.size for b in blobs.values()) + top.size + sum(m.size for _, m in insts),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (one sub-directory per image)")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--big", type=int, default=0, metavar="MIB",
                    help="also write big1, big2 and big3, one layer of MIB MiB each")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    # One RNG per image so that changing one image does not move the others.
    def rng(name):
        return random.Random("%d/%s" % (args.seed, name))

    amd64 = Platform("amd64")
    arm64 = Platform("arm64", "v8")

    small = ImageContent(rng("small"), "small", amd64, [256 * KiB, 512 * KiB, 768 * KiB])
    multi_amd = ImageContent(rng("multi-amd64"), "multi", amd64, [128 * KiB, 256 * KiB])
    multi_arm = ImageContent(rng("multi-arm64"), "multi", arm64, [128 * KiB, 256 * KiB])
    alpine = ImageContent(rng("alpine"), "alpine", amd64, [192 * KiB])

    summary = {
        "small": single(os.path.join(out, "small"), small, oci=False),
        "small-oci": single(os.path.join(out, "small-oci"), small, oci=True),
        "multi": multi(os.path.join(out, "multi"), [multi_amd, multi_arm], oci=False),
        "multi-oci": multi(os.path.join(out, "multi-oci"), [multi_amd, multi_arm], oci=True),
        "alpine": single(os.path.join(out, "alpine"), alpine, oci=False),
    }
    for name in ("big1", "big2", "big3") if args.big else ():
        big = ImageContent(rng(name), name, amd64, [args.big * 1024 * KiB], level=1)
        summary[name] = single(os.path.join(out, name), big, oci=False)
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    write_file(os.path.join(out, "images.json"), text.encode())
    print(text, end="")


if __name__ == "__main__":
    main()

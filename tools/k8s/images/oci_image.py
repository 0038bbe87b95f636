#!/usr/bin/env python3
"""Turn a root filesystem directory into a single-layer OCI image archive.

No registry and no Docker engine are needed: the layer tar, the image config,
the manifest and index.json are written by hand, as the OCI image layout
describes, and the result is a tar that `ctr images import` reads.

The archive is reproducible: the layer lists files sorted, with owner 0:0
(unless --keep-owner), and every mtime set to 0, so the same rootfs gives the
same image digest and a re-import is a no-op.

Usage:
    oci_image.py --name localhost/dataflow-task:dev --rootfs DIR -o image.tar \
        [--entrypoint /bin/sh] [--cmd -c --cmd 'echo hi'] [--env K=V] \
        [--workdir /] [--user 1000:1000]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(rootfs: str, keep_owner: bool) -> bytes:
    """An uncompressed, reproducible tar of everything under rootfs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                entries.append(os.path.join(dirpath, name))
        entries.sort(key=lambda p: os.path.relpath(p, rootfs))
        for path in entries:
            arcname = os.path.relpath(path, rootfs)
            info = tar.gettarinfo(path, arcname=arcname)
            info.mtime = 0
            if not keep_owner:
                info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buf.getvalue()


def build(args: argparse.Namespace) -> dict:
    raw = layer_tar(args.rootfs, args.keep_owner)
    diff_id = _sha256(raw)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as fh:
        fh.write(raw)
    layer = gz.getvalue()

    config_section: dict = {"Env": args.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if args.entrypoint:
        config_section["Entrypoint"] = args.entrypoint
    if args.cmd:
        config_section["Cmd"] = args.cmd
    if args.workdir:
        config_section["WorkingDir"] = args.workdir
    if args.user:
        config_section["User"] = args.user
    if args.label:
        config_section["Labels"] = dict(kv.split("=", 1) for kv in args.label)
    config = {
        "architecture": args.arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config_section,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tools/k8s/images/oci_image.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _sha256(layer),
                "size": len(layer),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    name = args.name
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _sha256(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": args.arch, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    blobs = {_sha256(b): b for b in (layer, config_bytes, manifest_bytes)}
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True, indent=1).encode(),
    }
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data

    tmp = args.output + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.output)
    return {"name": name, "manifest": _sha256(manifest_bytes), "config": _sha256(config_bytes)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="fully qualified name, e.g. localhost/pause:3.10")
    p.add_argument("--rootfs", required=True, help="directory to become the image's only layer")
    p.add_argument("-o", "--output", required=True, help="OCI archive to write")
    p.add_argument("--entrypoint", action="append", default=[], help="repeat for each argument")
    p.add_argument("--cmd", action="append", default=[], help="repeat for each argument")
    p.add_argument("--env", action="append", default=[], help="K=V, repeatable (default: a PATH)")
    p.add_argument("--label", action="append", default=[], help="K=V, repeatable")
    p.add_argument("--workdir", default="")
    p.add_argument("--user", default="")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--keep-owner", action="store_true", help="keep the files' uid/gid instead of 0:0")
    args = p.parse_args(argv)
    if not os.path.isdir(args.rootfs):
        p.error(f"not a directory: {args.rootfs}")
    if "/" not in args.name.split(":")[0] and "." not in args.name:
        p.error("give a fully qualified name such as localhost/NAME:TAG")
    print(json.dumps(build(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

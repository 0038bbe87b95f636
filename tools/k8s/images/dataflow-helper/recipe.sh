#!/usr/bin/env bash
# Recipe of localhost/dataflow-helper:dev: the pod helper that stages S3 data
# in and out beside a task container (airflow_dataflow/podhelper.py).
#
# No registry, no Docker, no internet: the image is assembled from this
# machine. A minimal CPython 3.11 runtime (the interpreter the project venv
# was made from: binary, libpython, a pruned lib/python3.11, the shared
# libraries ldd finds for them), boto3/botocore/s3transfer/jmespath/urllib3/
# python-dateutil/six from the project venv (botocore's service models cut
# down to s3, sts, sso, sso-oidc), and podhelper.py at /opt/dataflow/.
# Modules are precompiled (.pyc, unchecked-hash: valid whatever the mtimes,
# which the image layer sets to 0), so a pod starts without compiling boto3.
#
# The assembled rootfs is cached under $DATAFLOW_HELPER_CACHE (default
# /var/cache/airflow-dataflow/images/dataflow-helper/<hash of the inputs>),
# so a re-run copies it instead of rebuilding it; build-all.sh then finds the
# same image digest in containerd and imports nothing.
#
# Called by images/build-all.sh as: recipe.sh ROOTFS_DIR; prints the
# entrypoint. Image settings (env, user) are in image.args beside this file.
# Needs the project venv (`make setup`); DATAFLOW_HELPER_VENV overrides it.
set -euo pipefail
rootfs="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
venv="${DATAFLOW_HELPER_VENV:-$repo/.venv}"
py="$venv/bin/python"
[ -x "$py" ] || { echo "dataflow-helper recipe: no Python venv at $venv: run \`make setup\` first (or set DATAFLOW_HELPER_VENV)" >&2; exit 1; }
helper="$repo/airflow_dataflow/podhelper.py"
PKGS="boto3 botocore s3transfer jmespath urllib3 dateutil six.py"
BOTOCORE_SERVICES="s3 sts sso sso-oidc"

read -r prefix ver site < <("$py" -c 'import sys, sysconfig; print(sys.base_prefix, "%d.%d" % sys.version_info[:2], sysconfig.get_paths()["purelib"])')
exe="$(readlink -f "$prefix/bin/python$ver")"
libpy="$(ldd "$exe" | awk '/libpython/ {print $3}')"

# The cache key: everything the image is made of.
key="$({
  sha256sum "$0" "$helper" "$exe" ${libpy:+"$libpy"}
  "$py" -VV
  ls "$site" | grep -E '^(boto3|botocore|s3transfer|jmespath|urllib3|python_dateutil|six)-.*dist-info$'
} | sha256sum | cut -c1-16)"
cache_root="${DATAFLOW_HELPER_CACHE:-/var/cache/airflow-dataflow/images/dataflow-helper}"
cached="$cache_root/$key"

entrypoint() { printf '%s\n' /usr/local/bin/python3 /opt/dataflow/podhelper.py; }

# hardlinks when on the same filesystem (build-all.sh only reads and deletes them)
copy_out() { cp -al "$cached/rootfs/." "$rootfs/" 2>/dev/null || cp -a "$cached/rootfs/." "$rootfs/"; }

if [ -d "$cached/rootfs" ]; then
  copy_out
  entrypoint
  exit 0
fi

# one build at a time per machine (checkouts share the cache)
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [ -d "$cached/rootfs" ]; then
  copy_out
  entrypoint
  exit 0
fi
build="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$build"' EXIT
r="$build/rootfs"
mkdir -p "$r/usr/local/bin" "$r/usr/local/lib" "$r/opt/dataflow" "$r/etc" "$r/tmp" "$r/dataflow"
chmod 1777 "$r/tmp"

# 1. the interpreter and its standard library, pruned
cp "$exe" "$r/usr/local/bin/python$ver"
ln -s "python$ver" "$r/usr/local/bin/python3"
ln -s "python$ver" "$r/usr/local/bin/python"
stdlib="$prefix/lib/python$ver"
tar -C "$prefix/lib" -cf - \
  --exclude="python$ver/test" --exclude="python$ver/*/test" --exclude="python$ver/*/tests" \
  --exclude="python$ver/idlelib" --exclude="python$ver/tkinter" --exclude="python$ver/turtledemo" \
  --exclude="python$ver/turtle.py" --exclude="python$ver/ensurepip" --exclude="python$ver/lib2to3" \
  --exclude="python$ver/pydoc_data" --exclude="python$ver/distutils" --exclude="python$ver/venv" \
  --exclude="python$ver/sqlite3" --exclude="python$ver/curses" --exclude="python$ver/dbm" \
  --exclude="python$ver/config-$ver-*" --exclude="python$ver/site-packages" \
  --exclude='__pycache__' --exclude='*.pyc' \
  --exclude="python$ver/lib-dynload/_tkinter.*" --exclude="python$ver/lib-dynload/_curses*" \
  --exclude="python$ver/lib-dynload/readline.*" --exclude="python$ver/lib-dynload/_sqlite3.*" \
  --exclude="python$ver/lib-dynload/_dbm.*" --exclude="python$ver/lib-dynload/_gdbm.*" \
  --exclude="python$ver/lib-dynload/nis.*" --exclude="python$ver/lib-dynload/_test*" \
  --exclude="python$ver/lib-dynload/xx*" --exclude="python$ver/lib-dynload/_xx*" \
  --exclude="python$ver/lib-dynload/_ctypes_test.*" --exclude="python$ver/lib-dynload/ossaudiodev.*" \
  --exclude="python$ver/lib-dynload/spwd.*" --exclude="python$ver/lib-dynload/_crypt.*" \
  "python$ver" | tar -C "$r/usr/local/lib" -xf -
mkdir -p "$r/usr/local/lib/python$ver/site-packages"

# 2. shared libraries (libpython, libc, libssl, ...) with the dynamic loader,
#    at the paths ldd resolves them to; libpython into the multiarch dir the
#    loader searches by default (the binary's RUNPATH names the build prefix).
libs="$( { ldd "$exe"; for so in "$r/usr/local/lib/python$ver/lib-dynload/"*.so; do ldd "$stdlib/lib-dynload/$(basename "$so")"; done; } \
  | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | sort -u)"
multiarch="$(dirname "$(ldd "$exe" | awk '/libc\.so/ {print $3}')")"
for lib in $libs; do
  case "$lib" in
    */libpython*) dest="$r$multiarch/$(basename "$lib")" ;;
    *) dest="$r$lib" ;;
  esac
  mkdir -p "$(dirname "$dest")"
  cp -L "$lib" "$dest"
done
# the interpreter's own ELF files carry debug symbols (~20 MB): strip them
strip --strip-unneeded "$r/usr/local/bin/python$ver" "$r$multiarch"/libpython*.so* \
  "$r/usr/local/lib/python$ver/lib-dynload/"*.so
# the loader at its canonical path too (/lib64 -> the multiarch dir's copy)
interp="$(readelf -l "$exe" | sed -n 's/.*interpreter: \(.*\)]/\1/p')"
[ -e "$r$interp" ] || { mkdir -p "$r$(dirname "$interp")"; cp -L "$interp" "$r$interp"; }

# 3. boto3 and its dependencies, botocore's service models limited to S3 and the credential services
for p in $PKGS; do cp -a "$site/$p" "$r/usr/local/lib/python$ver/site-packages/"; done
find "$r/usr/local/lib/python$ver/site-packages" -name __pycache__ -prune -exec rm -rf {} +
data="$r/usr/local/lib/python$ver/site-packages/botocore/data"
for d in "$data"/*/; do
  s="$(basename "$d")"
  case " $BOTOCORE_SERVICES " in *" $s "*) ;; *) rm -rf "$d" ;; esac
done
# boto3's resource models are not used (client API only)
find "$r/usr/local/lib/python$ver/site-packages/boto3/data" -mindepth 1 -maxdepth 1 ! -name s3 -exec rm -rf {} +

# 4. the helper
install -m 0644 "$helper" "$r/opt/dataflow/podhelper.py"

# 5. a few files a process expects
printf 'root:x:0:0:root:/root:/sbin/nologin\ndataflow:x:1000:1000:dataflow:/tmp:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' > "$r/etc/passwd"
printf 'root:x:0:\ndataflow:x:1000:\nnonroot:x:65532:\n' > "$r/etc/group"

# 6. precompile (unchecked-hash pycs stay valid with the layer's zero mtimes;
#    pods run with a read-only root filesystem and could not write them)
#    Compiled by the venv's interpreter (the same one), with the image's paths.
"$py" -I -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$r" -p / \
  "$r/usr/local/lib/python$ver" "$r/opt/dataflow" >/dev/null
# the image must import boto3 and run the helper on its own files
chroot "$r" /usr/local/bin/python3 -I -c 'import boto3, botocore.session, ssl, hashlib, json, concurrent.futures; boto3.session.Session().client("s3", region_name="us-east-1"); boto3.session.Session().client("sts", region_name="us-east-1")'
chroot "$r" /usr/local/bin/python3 -I -B /opt/dataflow/podhelper.py 2>/dev/null && exit 1 || true

chmod -R go-w "$r"
rm -rf "$cached.tmp" && mkdir -p "$cached.tmp" && mv "$r" "$cached.tmp/rootfs"
# keep only this build: older ones (other key names) are garbage; leftovers of killed builds too
find "$cache_root" -mindepth 1 -maxdepth 1 -regextype posix-extended \( -regex '.*/[0-9a-f]{16}(\.tmp)?' -o -name '.build-*' \) \
  ! -name "$key.tmp" ! -name "$(basename "$build")" -exec rm -rf {} +
mv "$cached.tmp" "$cached"
copy_out
entrypoint

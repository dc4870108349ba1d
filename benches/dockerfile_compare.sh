#!/usr/bin/env bash
# Two Dockerfiles (below: a simple one and the data-science shape), each
# built and pushed by kiln and by `buildah bud` in the same run: the same
# Dockerfile and context, the same Debian base (bootstrapped by kiln
# into a loopback docker-registry first), both pushing the result to that
# registry. Cold (empty caches; buildah's storage emptied) and warm (second
# build, caches kept). Prints seconds, peak RSS and the ratio buildah/kiln
# (>1: kiln is faster). The Dockerfile has package RUN lines (kiln: native
# stages) and other RUN lines (kiln: its sandbox; buildah: its chroot
# isolation). The mirror is the host's own apt source, as the base's
# sources.list names it; no archive address is written here.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/x86_64-unknown-linux-gnu/release/kiln}
[ -x "$KILN" ] || cargo build --release --bin kiln
command -v buildah >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah; }
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; }

work=$(mktemp -d)
REG_PID=''
cleanup() {
  [ -z "$REG_PID" ] || kill "$REG_PID" 2>/dev/null || true
  [ -z "${LINK_PID:-}" ] || kill "$LINK_PID" 2>/dev/null || true
  [ -z "${PROXY_PID:-}" ] || kill "$PROXY_PID" 2>/dev/null || true
  for c in ctx ctx2 ctx3 ctx4; do
    buildah --root "$work/bstore-$c" --runroot "$work/brun-$c" rm --all >/dev/null 2>&1 || true
  done
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT
. benches/lib.sh
start_registry
push_debian_base

mkdir -p "$work/ctx"
cat > "$work/ctx/app.py" <<'PY'
import numpy, requests
print("numpy", numpy.__version__)
PY
cat > "$work/ctx/Dockerfile" <<DOCKERFILE
FROM $REG/bench/debian:base
RUN apt-get update && apt-get install -y --no-install-recommends python3-numpy python3-requests \\
 && rm -rf /var/lib/apt/lists/*
RUN useradd -m -u 1000 app && mkdir -p /srv/app/data && chown -R app:app /srv/app
COPY app.py /srv/app/app.py
RUN sed -i 's/numpy"/numpy version"/' /srv/app/app.py
USER app
WORKDIR /srv/app
CMD ["python3", "app.py"]
DOCKERFILE

# A second Dockerfile, the data-science shape (issue 15): apt installs
# Python and pip, pip installs pinned packages into the system Python.
# buildah's pip reaches the index through this machine's TLS-intercepting
# proxy, whose CA is only in the host's store: the host's bundle is bound
# read-only into its RUNs and named by PIP_CERT. kiln's own pip client uses
# the system store. The index is the host's pip configuration's (none
# written here).
mkdir -p "$work/ctx2"
cat > "$work/ctx2/app.py" <<'PY'
import idna, six
print(six.__version__, idna.__version__)
PY
cat > "$work/ctx2/Dockerfile" <<DOCKERFILE
FROM $REG/bench/debian:base
ARG PIP_CERT
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --break-system-packages six==1.16.0 idna==3.7
RUN useradd -m -u 1000 app && mkdir -p /srv/app/data && chown -R 1000:1000 /srv/app
COPY app.py /srv/app/
USER app
WORKDIR /srv/app
DOCKERFILE

# A third, the full data image (issue 19's row): Python and pip from apt,
# then the six-package scientific stack from the index, unpinned (both
# tools resolve the same index in the same minute).
mkdir -p "$work/ctx3"
cat > "$work/ctx3/Dockerfile" <<DOCKERFILE
FROM $REG/bench/debian:base
ARG PIP_CERT
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --break-system-packages numpy pandas requests scipy matplotlib scikit-learn
DOCKERFILE

# kiln reads each Dockerfile through a spec that names the push target.
for c in ctx ctx2 ctx3; do
  cat > "$work/$c/kiln.toml" <<TOML
[image]
name = "$REG/bench/app-kiln-$c"
dockerfile = "Dockerfile"
TOML
done
# kiln_run CTX / buildah_run CTX [BUD FLAGS...]: one build + push; each
# context has its own kiln cache and buildah storage.
kiln_run() {
  "$KILN" build "$work/$1/kiln.toml" --quiet --cache "$work/kcache-$1" --push --json
}
buildah_run() {
  local c=$1; shift
  buildah --root "$work/bstore-$c" --runroot "$work/brun-$c" --storage-driver vfs bud \
    --isolation chroot --network host --tls-verify=false --layers "$@" \
    -f "$work/$c/Dockerfile" -t "$REG/bench/app-buildah-$c:latest" "$work/$c" &&
    buildah --root "$work/bstore-$c" --runroot "$work/brun-$c" --storage-driver vfs push \
      --tls-verify=false "$REG/bench/app-buildah-$c:latest"
}

export KILN work REG
export -f kiln_run buildah_run
ratio() { awk -v p="$1" -v k="$2" 'BEGIN { printf "%.1f", p / k }'; }
# row TITLE CTX [BUD FLAGS...]: cold (empty cache and storage) then warm,
# for each tool.
row() {
  local title=$1 c=$2; shift 2
  local kc kc_rss kw kw_rss bc bc_rss bw bw_rss
  read -r kc kc_rss < <(secs_rss "$work/k1-$c.log" kiln_run "$c")
  eval "KC_$c=$kc"
  read -r kw kw_rss < <(secs_rss "$work/k2-$c.log" kiln_run "$c")
  read -r bc bc_rss < <(secs_rss "$work/b1-$c.log" buildah_run "$c" "$@")
  eval "BC_$c=$bc"
  read -r bw bw_rss < <(secs_rss "$work/b2-$c.log" buildah_run "$c" "$@")
  echo "$title"
  printf '%-8s %9s %9s %12s %12s\n' tool cold_s warm_s cold_rss_mb warm_rss_mb
  printf '%-8s %9s %9s %12s %12s\n' kiln "$kc" "$kw" "$kc_rss" "$kw_rss"
  printf '%-8s %9s %9s %12s %12s\n' buildah "$bc" "$bw" "$bc_rss" "$bw_rss"
  printf 'ratio buildah/kiln: cold %sx, warm %sx\n' "$(ratio "$bc" "$kc")" "$(ratio "$bw" "$kw")"
}
# ROWS picks the rows to run (default all: "1 2 3 4 5").
ROWS=${ROWS:-1 2 3 4 5}
has_row() { [[ " $ROWS " == *" $1 "* ]]; }
# The URLs of the full data image's .debs and wheels (what its lock pins),
# for the download floor: `fetch_all DIR` gets them all by curl, 16 at a
# time, into an empty DIR.
package_urls() {
  [ -s "$work/urls" ] && return
  mkdir -p "$work/lockctx"
  cp "$work/ctx3/Dockerfile" "$work/lockctx/Dockerfile"
  printf '[image]\nname = "%s/bench/lock"\ndockerfile = "Dockerfile"\n' "$REG" >"$work/lockctx/kiln.toml"
  "$KILN" lock "$work/lockctx/kiln.toml" --quiet --cache "$work/kcache-lock" --lockfile "$work/ctx3.lock" >/dev/null
  python3 - "$work/ctx3.lock" > "$work/urls" <<'PY'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
for p in lock.get("platform", []):
    for section in ("apt", "pip"):
        for pkg in p.get(section, []):
            print(pkg["url"])
PY
}
fetch_all() {
  mkdir -p "$work/$1" && cd "$work/$1" && xargs -a "$work/urls" -P 16 -n 1 curl -sSfLO
}
export work
export -f fetch_all
has_row 1 && row "Dockerfile build + push (apt RUN natively, 2 sandboxed RUN lines, COPY; same base, same registry)" ctx
echo
has_row 2 && row "data-science Dockerfile (apt + pip) build + push (apt and pip natively, 1 sandboxed RUN line, COPY)" ctx2 \
  --volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt
if has_row 3; then
package_urls
echo
row "full data image: apt python3 + pip + ca-certificates, pip numpy pandas requests scipy matplotlib scikit-learn, build + push" ctx3 \
  --volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt

# The floor for that image: the same .debs and wheels (the URLs kiln's
# lock pins) fetched by curl, 16 at a time, into an empty directory.
read -r floor floor_rss < <(secs_rss "$work/floor.log" fetch_all floor)
printf 'download floor (%s files, %s MB, curl x16): %ss; kiln cold / floor: %sx\n' \
  "$(wc -l < "$work/urls")" "$(( $(du -sb "$work/floor" | cut -f1) / 1000000 ))" "$floor" \
  "$(awk -v k="$KC_ctx3" -v f="$floor" 'BEGIN { printf "%.2f", k / f }')"

# The image's other floor: the bytecode pip writes for those wheels is
# CPython compiling every .py they hold, which no builder can skip or
# share. The wheels' sources, unpacked untimed, compiled by the host's
# python3 in one forked process a core (the largest files dealt out
# first), with nothing written: compile() alone, the least any builder
# that writes those pycs spends. (kiln compiles with the image's own
# interpreter, and also hashes, marshals and packs each pyc.)
compile_floor() {
  rm -rf "$work/srcs" && python3 - "$work/floor" "$work/srcs" <<'PY'
import pathlib, sys, zipfile
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    zipfile.ZipFile(whl).extractall(sys.argv[2])
PY
  find "$work/srcs" -name '*.py' | wc -l >"$work/srcs.count"
  cat >"$work/compile_floor.py" <<'PY'
import os, sys
files = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith(".py")]
files.sort(key=lambda p: (-os.path.getsize(p), p))
cores = len(os.sched_getaffinity(0))
children = []
for shard in (files[i::cores] for i in range(cores)):
    pid = os.fork()
    if pid == 0:
        for p in shard:
            with open(p, "rb") as f:
                source = f.read()
            try:
                compile(source, p, "exec", dont_inherit=True)
            except Exception:
                pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
PY
  secs_rss "$work/compile.log" python3 "$work/compile_floor.py" "$work/srcs"
}
read -r cfloor _ < <(compile_floor)
printf 'compile floor (%s sources, host %s compile() alone, %s processes): %ss\n' \
  "$(cat "$work/srcs.count")" "$(python3 -c 'import platform; print("python" + platform.python_version())')" \
  "$(nproc)" "$cfloor"
printf 'kiln cold / the larger floor: %sx; 15x buildah would allow %ss\n' \
  "$(awk -v k="$KC_ctx3" -v f="$floor" -v c="$cfloor" 'BEGIN { m = f > c ? f : c; printf "%.2f", k / m }')" \
  "$(awk -v b="$BC_ctx3" 'BEGIN { printf "%.2f", b / 15 }')"
rm -rf "$work/srcs"
fi

# Row 4: the full data image again, cold, pushed to the same registry
# behind a LINK_MBPS (25) MB/s uplink (benches/slow_link.py, a throttling
# loopback proxy; the base is still pulled directly). kiln sends each
# layer as soon as it is built, so most of the upload overlaps the build;
# buildah pushes after its build.
if has_row 4; then
  LINK_MBPS=${LINK_MBPS:-25}
  lport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 benches/slow_link.py "$lport" "${REG#*:}" "$LINK_MBPS" >"$work/link.log" 2>&1 &
  LINK_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$lport/v2/" >/dev/null && break; sleep 0.1; done
  SLOW=127.0.0.1:$lport
  mkdir -p "$work/ctx4"
  cp "$work/ctx3/Dockerfile" "$work/ctx4/Dockerfile"
  printf '[image]\nname = "%s/bench/app-kiln-ctx4"\ndockerfile = "Dockerfile"\n' "$SLOW" >"$work/ctx4/kiln.toml"
  slow_buildah() {
    buildah --root "$work/bstore-ctx4" --runroot "$work/brun-ctx4" --storage-driver vfs bud \
      --isolation chroot --network host --tls-verify=false --layers "$@" \
      -f "$work/ctx4/Dockerfile" -t "$SLOW/bench/app-buildah-ctx4:latest" "$work/ctx4" &&
      buildah --root "$work/bstore-ctx4" --runroot "$work/brun-ctx4" --storage-driver vfs push \
        --tls-verify=false "$SLOW/bench/app-buildah-ctx4:latest"
  }
  export SLOW
  export -f slow_buildah
  read -r kc kc_rss < <(secs_rss "$work/k1-ctx4.log" kiln_run ctx4)
  kiln_mb=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["push"]; print((p["bytes_uploaded"]+p["referrer_bytes_uploaded"])//1000000)' "$work/k1-ctx4.log" 2>/dev/null || echo "?")
  read -r bc bc_rss < <(secs_rss "$work/b1-ctx4.log" slow_buildah \
    --volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt)
  echo
  echo "full data image, cold, pushed through a $LINK_MBPS MB/s link (kiln uploaded $kiln_mb MB)"
  printf '%-8s %9s %12s\n' tool cold_s cold_rss_mb
  printf '%-8s %9s %12s\n' kiln "$kc" "$kc_rss"
  printf '%-8s %9s %12s\n' buildah "$bc" "$bc_rss"
  printf 'ratio buildah/kiln: cold %sx\n' "$(ratio "$bc" "$kc")"
fi

# Row 5: the full data image again, cold, with its packages fetched through
# a DOWN_MBPS (20) MB/s downlink (benches/slow_link.py proxy, named as the
# site's proxy by HTTPS_PROXY/HTTP_PROXY; the registry is reached
# directly), beside the download floor through the same proxy. kiln
# compiles each wheel's bytecode as it arrives, the largest first; what
# follows the last byte is what is left to compile, compress and push.
if has_row 5; then
  package_urls
  DOWN_MBPS=${DOWN_MBPS:-20}
  pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 benches/slow_link.py proxy "$pport" "$DOWN_MBPS" >"$work/proxy.log" 2>&1 &
  PROXY_PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$pport") 2>/dev/null && break; sleep 0.1; done
  mkdir -p "$work/ctx5"
  cp "$work/ctx3/Dockerfile" "$work/ctx5/Dockerfile"
  printf '[image]\nname = "%s/bench/app-kiln-ctx5"\ndockerfile = "Dockerfile"\n' "$REG" >"$work/ctx5/kiln.toml"
  read -r kc kc_rss floor < <(
    export HTTPS_PROXY=http://127.0.0.1:$pport HTTP_PROXY=http://127.0.0.1:$pport
    export https_proxy=$HTTPS_PROXY http_proxy=$HTTP_PROXY NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
    read -r kc kc_rss < <(secs_rss "$work/k1-ctx5.log" kiln_run ctx5)
    read -r floor _ < <(secs_rss "$work/floor5.log" fetch_all floor5)
    echo "$kc $kc_rss $floor"
  )
  echo
  echo "full data image, cold, its packages fetched through a $DOWN_MBPS MB/s downlink"
  printf '%-8s %9s %12s\n' tool cold_s cold_rss_mb
  printf '%-8s %9s %12s\n' kiln "$kc" "$kc_rss"
  printf '%-8s %9s %12s\n' floor "$floor" -
  printf 'kiln cold / floor: %sx\n' "$(awk -v k="$kc" -v f="$floor" 'BEGIN { printf "%.2f", k / f }')"
fi

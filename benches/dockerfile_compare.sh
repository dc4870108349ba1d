#!/usr/bin/env bash
# A Dockerfile, built and pushed by kiln and by `buildah bud` in the same run:
# the same Dockerfile and context, the same Debian base (bootstrapped by kiln
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
  buildah --root "$work/bstore" --runroot "$work/brun" rm --all >/dev/null 2>&1 || true
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

# kiln reads the Dockerfile through a spec that names the push target.
cat > "$work/ctx/kiln.toml" <<TOML
[image]
name = "$REG/bench/app-kiln"
dockerfile = "Dockerfile"
TOML
kiln_run() {
  "$KILN" build "$work/ctx/kiln.toml" --quiet --cache "$work/kcache" --push --json
}
buildah_run() {
  buildah --root "$work/bstore" --runroot "$work/brun" --storage-driver vfs bud \
    --isolation chroot --network host --tls-verify=false --layers \
    -f "$work/ctx/Dockerfile" -t "$REG/bench/app-buildah:latest" "$work/ctx" &&
    buildah --root "$work/bstore" --runroot "$work/brun" --storage-driver vfs push \
      --tls-verify=false "$REG/bench/app-buildah:latest"
}

export KILN work REG
export -f kiln_run buildah_run
rm -rf "$work/kcache"
read -r kc kc_rss < <(secs_rss "$work/k1.log" kiln_run)
read -r kw kw_rss < <(secs_rss "$work/k2.log" kiln_run)
read -r bc bc_rss < <(secs_rss "$work/b1.log" buildah_run)
read -r bw bw_rss < <(secs_rss "$work/b2.log" buildah_run)

ratio() { awk -v p="$1" -v k="$2" 'BEGIN { printf "%.1f", p / k }'; }
echo "Dockerfile build + push (apt RUN natively, 2 sandboxed RUN lines, COPY; same base, same registry)"
printf '%-8s %9s %9s %12s %12s\n' tool cold_s warm_s cold_rss_mb warm_rss_mb
printf '%-8s %9s %9s %12s %12s\n' kiln "$kc" "$kw" "$kc_rss" "$kw_rss"
printf '%-8s %9s %9s %12s %12s\n' buildah "$bc" "$bw" "$bc_rss" "$bw_rss"
printf 'ratio buildah/kiln: cold %sx, warm %sx\n' "$(ratio "$bc" "$kc")" "$(ratio "$bw" "$kw")"

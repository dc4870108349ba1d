#!/usr/bin/env bash
# Issue-7 figures for an apt + pip image (Debian minbase + python3, numpy):
#   1. `kiln build --offline --frozen` from a warm cache (after `kiln lock` + a first build);
#   2. a no-op rebuild + push to a registry that already has every blob
#      (goal <= 0.3 s, 0 blobs uploaded);
#   3. bytes pushed after one pip version bump (numpy) divided by the size of
#      that wheel's new layer (goal <= 1.1).
# Uses the release binary, Debian's docker-registry on a random loopback port,
# the host's apt sources and pip configuration (as kiln finds them).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -z "${KILN:-}" ] || KILN=$(realpath "$KILN")
KILN=${KILN:-$PWD/target/x86_64-unknown-linux-gnu/release/kiln}
[ -x "$KILN" ] || cargo build --release --bin kiln
work=$(mktemp -d); trap 'kill $REG_PID 2>/dev/null || true; rm -rf "$work"' EXIT
export KILN_CACHE=$work/cache NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

REG_PID=''
. benches/lib.sh
start_registry
port=${REG#127.0.0.1:}

secs() { local s e; s=$(date +%s.%N); "$@" >"$work/last.json" 2>"$work/last.err" || { cat "$work/last.err" >&2; return 1; }; e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'; }
field() { python3 -c "import json,sys; d=json.load(open('$work/last.json')); print(eval(sys.argv[1]))" "$1"; }

spec() { # $1 = numpy version
  mkdir -p "$work/img"
  cat > "$work/img/kiln.toml" <<TOML
[image]
name = "127.0.0.1:$port/bench/app"
tags = ["t"]
platforms = ["linux/amd64"]
[apt]
bootstrap = "minbase"
packages = ["python3"]
[pip]
packages = ["numpy==$1"]
TOML
}

cd "$work/img" 2>/dev/null || { mkdir -p "$work/img"; cd "$work/img"; }
spec 1.26.4
"$KILN" lock --quiet
secs "$KILN" build --quiet --locked --json -o oci:first >/dev/null
offline=$(secs "$KILN" build --offline --frozen --json -o oci:offline)
echo "offline build from a warm cache (apt minbase+python3, numpy): ${offline} s"

secs "$KILN" build --locked --push --json >/dev/null
requests() { grep -c 'HTTP/1.1"' "$work/reg.log"; }
before=$(requests)
noop=$(secs "$KILN" build --locked --push --json)
echo "no-op rebuild + push: ${noop} s, registry requests: $(( $(requests) - before )) (one HEAD per tag, and one per referrer this cache has not seen in the repository), blobs uploaded: $(field "d['push']['blobs_uploaded']"), referrer blobs uploaded: $(field "d['push']['referrer_blobs_uploaded']")"

spec 2.0.2
"$KILN" lock --quiet
secs "$KILN" build --locked --push --json >/dev/null
pushed=$(field "d['push']['bytes_uploaded'] + d['push']['referrer_bytes_uploaded']")
"$KILN" build --locked --quiet --json -o oci:bumped >"$work/bumped.json"
read -r layer pycs < <(python3 - "$work/img/bumped" <<'PY'
import json, sys, os
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
m = json.load(open(os.path.join(d, "blobs/sha256", idx["manifests"][0]["digest"].split(":")[1])))
cfg = json.load(open(os.path.join(d, "blobs/sha256", m["config"]["digest"].split(":")[1])))
hist = [h for h in cfg["history"] if not h.get("empty_layer")]
sizes = {"numpy": 0, "pycs": 0}
for h, l in zip(hist, m["layers"]):
    by = h.get("created_by", "")
    if "numpy==2.0.2" in by:
        sizes["numpy"] = l["size"]
    elif "kiln bytecode" in by:
        sizes["pycs"] = l["size"]
print(sizes["numpy"], sizes["pycs"])
PY
)
echo "numpy 1.26.4 -> 2.0.2: pushed ${pushed} bytes; the new numpy layer is ${layer} bytes, its bytecode layer ${pycs} bytes; pushed / numpy layer $(awk -v p="$pushed" -v l="$layer" 'BEGIN { printf "%.3f", p / l }'), pushed / (numpy layer + bytecode layer) $(awk -v p="$pushed" -v l="$layer" -v b="$pycs" 'BEGIN { printf "%.3f", p / (l + b) }')"

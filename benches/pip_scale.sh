#!/usr/bin/env bash
# Issue 19 at scale: kiln's [pip] step on real-sized inputs against
# `uv pip install --target`, each row printed with wall seconds, peak RSS
# (MB, /usr/bin/time's %M: the largest process of the tree) and the ratio
# uv/kiln (>1: kiln is faster).
#
#   1. A ~110-wheel freeze (JupyterLab + the PyData stack), generated here
#      with `uv pip compile` from the short pinned list below for CPython 3.11
#      / manylinux_2_36 x86_64; both tools install that exact freeze, cold
#      (empty caches) then warm (second run, caches kept). kiln: a spec on a
#      Debian minbase + python3 base (benches/lib.sh, pushed to a loopback
#      registry) whose `[pip] requirements` is the freeze, built to an OCI
#      layout; once with `compile = false` (uv --target writes no .pyc) and
#      once with the default (bytecode on) against uv --compile-bytecode.
#      A kiln build of the base alone (no [pip]) is the floor under both.
#   2. A >= 2 GB image: BIG_WHEELS (24) synthetic wheels of ~BIG_MB (100) MB
#      of incompressible data each, written here with python3's zipfile
#      (fixed seed), installed cold from a local wheelhouse with no index
#      by both tools (kiln with compile = false and true), then warm
#      (compile = false). The point is kiln's peak RSS: it should not grow
#      with the image (compare row 1); and that a wheelhouse is linked into
#      kiln's cache, not copied, and not hashed again while untouched.
#
#   0. The six-package set of benches/pip_compare.sh (numpy pandas requests
#      scipy matplotlib scikit-learn), the same way as row 1 with
#      `compile = false`; then the layer step alone in each compression
#      (the wheels cached, the layer memo emptied before each run), with
#      the layers' total size: gzip (level 1, the default), gzip:6, zstd.
#
# Rows 0 and 1 take COLD_RUNS (3) cold runs of each tool in turn (kiln,
# uv, kiln, uv...) and compare the medians: one cold uv run of the freeze
# on ext4 took 2.07 s and another 5.16 s, by how much writeback it met.
# They also time kiln's pip step alone: the same cold build on a cache
# that holds the base already (pulled by a build without [pip], untimed),
# as any build after the first on that base finds it; uv has no base to
# pull, so this is the like-for-like pip step beside the whole cold build.
#
# After the timings each row checks that kiln's image and uv's directory
# hold the same distributions (names and versions of the dist-infos).
# Needs ~15 GB free under TMPDIR for row 2 at the default size.
#
# The kiln side is a whole `kiln build`: pulling the base from the loopback
# registry, resolving, downloading, laying out, gzip-compressing every
# layer and writing the OCI layout; uv only writes a directory. The index
# is whatever the host's pip configuration and uv's defaults name (nothing
# written here); the Debian mirror is the host's apt sources'. On a shared
# machine the timings are noisy: compare rows from the same run.
set -euo pipefail
[ -z "${KILN:-}" ] || KILN=$(realpath "$KILN")
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/x86_64-unknown-linux-gnu/release/kiln}
[ -x "$KILN" ] || cargo build --release --bin kiln
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; }
VENV=$PWD/target/pip-bench-venv
if [ ! -x "$VENV/bin/uv" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q uv
fi
UV=$VENV/bin/uv
BIG_WHEELS=${BIG_WHEELS:-24}
BIG_MB=${BIG_MB:-100}
# ROWS picks the rows to run (default all: "0 1 2").
ROWS=${ROWS:-0 1 2}
has_row() { [[ " $ROWS " == *" $1 "* ]]; }

work=$(mktemp -d)
REG_PID=''
trap '[ -z "$REG_PID" ] || kill "$REG_PID" 2>/dev/null || true; rm -rf "$work"' EXIT
. benches/lib.sh
start_registry
push_debian_base
BASE=$REG/bench/debian:base

# The top-level list (pins with CPython 3.11 manylinux x86_64 wheels); the
# rest of the freeze is whatever the index resolves them to today.
cat > "$work/top.in" <<'REQ'
jupyterlab==4.2.5
pandas==2.2.3
scikit-learn==1.5.2
pyarrow==17.0.0
matplotlib==3.9.2
requests==2.32.3
seaborn==0.13.2
sqlalchemy==2.0.35
REQ
TARGET_FLAGS="--python-version 3.11 --python-platform x86_64-manylinux_2_36"

export KILN UV work BASE TARGET_FLAGS
# kiln_run DIR: a build of DIR/kiln.toml with the cache DIR.cache into the
# OCI layout DIR.out (replaced, so a warm run writes a fresh layout).
kiln_run() {
  rm -rf "$1.out"
  "$KILN" build "$1/kiln.toml" --quiet --cache "$1.cache" -o "oci:$1.out"
}
# uv_run NAME TARGET [FLAGS...]: uv pip install --target TARGET (replaced)
# with the cache $work/NAME.uvcache.
uv_run() {
  local name=$1 target=$2; shift 2
  rm -rf "$target"
  # shellcheck disable=SC2086
  UV_CACHE_DIR="$work/$name.uvcache" "$UV" pip install --quiet --target "$target" $TARGET_FLAGS "$@"
}
export -f kiln_run uv_run

COLD_RUNS=${COLD_RUNS:-3}

# measure VAR LOG CMD...: "SECONDS RSS_MB" of CMD into VAR, or "FAIL FAIL"
# (the log goes to stderr, and FAILED is remembered for the exit status).
FAILED=0
measure() {
  local var=$1 log=$2; shift 2
  local out
  if out=$(secs_rss "$log" "$@" 2>/dev/null); then
    printf -v "$var" '%s' "$out"
  else
    echo "FAILED: $* (log $log):" >&2
    tail -40 "$log" >&2
    printf -v "$var" '%s' "FAIL FAIL"
    FAILED=1
  fi
}
# median_of "S RSS"...: the median seconds and the largest RSS, or
# "FAIL FAIL" when any run failed.
median_of() {
  if printf '%s\n' "$@" | grep -q '^FAIL'; then echo "FAIL FAIL"; return; fi
  local secs rss
  secs=$(printf '%s\n' "$@" | awk '{ print $1 }' | sort -n | awk '{ s[NR] = $1 } END { print s[int((NR + 1) / 2)] }')
  rss=$(printf '%s\n' "$@" | awk '{ print $2 }' | sort -n | tail -1)
  echo "$secs $rss"
}
# cold_pair KVAR UVAR LOG KILN_DIR UV_NAME UV_TARGET [UV_FLAGS...]: COLD_RUNS
# cold runs of `kiln_run KILN_DIR` and `uv_run UV_NAME UV_TARGET UV_FLAGS`
# in turn, each cache emptied first; the medians into KVAR and UVAR. The
# caches of the last runs stay, for a warm run next.
cold_pair() {
  local kvar=$1 uvar=$2 log=$3 kdir=$4 uname=$5 utarget=$6
  shift 6
  local ks=() us=() t i
  for i in $(seq "$COLD_RUNS"); do
    rm -rf "$kdir.cache"
    measure t "$log-kiln-$i.log" kiln_run "$kdir"
    ks+=("$t")
    rm -rf "$work/$uname.uvcache"
    measure t "$log-uv-$i.log" uv_run "$uname" "$utarget" "$@"
    us+=("$t")
  done
  printf -v "$kvar" '%s' "$(median_of "${ks[@]}")"
  printf -v "$uvar" '%s' "$(median_of "${us[@]}")"
  printf -v "${kvar}_runs" '%s' "$(printf '%s ' "${ks[@]%% *}")"
  printf -v "${uvar}_runs" '%s' "$(printf '%s ' "${us[@]%% *}")"
}
# runs_line KVAR UVAR: each cold run's seconds, in the order taken.
runs_line() {
  local k="${1}_runs" u="${2}_runs"
  echo "cold runs, in turn: kiln ${!k}s; uv ${!u}s"
}
# pip_alone VAR LOG SPEC_DIR: the median of COLD_RUNS cold kiln builds of
# SPEC_DIR (copied beside it) on a cache holding the base alone.
pip_alone() {
  local var=$1 log=$2 dir=$3 runs=() t i
  mkdir -p "$dir-alone" "$work/base-only"
  cp -r "$dir/." "$dir-alone/"
  printf '[image]\nname = "bench/base-only"\nbase = "%s"\n' "$BASE" >"$work/base-only/kiln.toml"
  for i in $(seq "$COLD_RUNS"); do
    rm -rf "$dir-alone.cache"
    "$KILN" build "$work/base-only/kiln.toml" --quiet --cache "$dir-alone.cache" -o "oci:$work/base-only.out" >/dev/null
    measure t "$log-$i.log" kiln_run "$dir-alone"
    runs+=("$t")
  done
  rm -rf "$dir-alone.cache" "$dir-alone.out" "$work/base-only.out"
  printf -v "$var" '%s' "$(median_of "${runs[@]}")"
}
# alone_line KILN_ALONE UV_COLD: the line that compares them.
alone_line() {
  echo "pip step alone (base pulled before, untimed), cold: kiln $(secs_of "$1") s, uv $(secs_of "$2") s: uv/kiln $(ratio "$(secs_of "$2")" "$(secs_of "$1")")"
}
ratio() { awk -v p="$1" -v k="$2" 'BEGIN { if (k + 0 > 0 && p + 0 > 0) printf "%.2f", p / k; else printf "-" }'; }
mb() { du -sb "$1" 2>/dev/null | awk '{ printf "%.0f", $1 / 1048576 }' || true; }
hdr() { printf '%-42s %8s %8s %12s %12s %10s %10s\n' tool cold_s warm_s cold_rss_mb warm_rss_mb cold_ratio warm_ratio; }
line() { # TOOL "COLD_S COLD_RSS" "WARM_S WARM_RSS" COLD_RATIO WARM_RATIO
  local cs cr ws wr
  read -r cs cr <<<"$2"; read -r ws wr <<<"$3"
  printf '%-42s %8s %8s %12s %12s %10s %10s\n' "$1" "$cs" "$ws" "$cr" "$wr" "$4" "$5"
}
secs_of() { echo "${1%% *}"; }

# dists DIR|oci:LAYOUT: the sorted "name==version" of every installed
# distribution (its dist-info's METADATA), from a directory or from every
# layer of an OCI layout (whiteouts ignored: pip layers only add; only
# dist-infos directly in dist-packages, not the ones packages vendor).
dists() {
  python3 - "$1" <<'PY'
import email.parser, json, os, re, sys, tarfile
arg = sys.argv[1]
found = set()
def meta(data):
    m = email.parser.BytesParser().parsebytes(data, headersonly=True)
    found.add(f"{m['Name'].lower().replace('_', '-')}=={m['Version']}")
if arg.startswith("oci:"):
    d = arg[4:]
    blob = lambda dg: os.path.join(d, "blobs", *dg.split(":"))
    idx = json.load(open(os.path.join(d, "index.json")))
    man = json.load(open(blob(idx["manifests"][0]["digest"])))
    if "manifests" in man:
        man = json.load(open(blob(man["manifests"][0]["digest"])))
    for layer in man["layers"]:
        with tarfile.open(blob(layer["digest"]), "r:*") as t:  # kiln gzips in several members: not "r|*"
            for m in t:
                if m.isfile() and re.search(r"/dist-packages/[^/]+\.dist-info/METADATA$", m.name):
                    meta(t.extractfile(m).read())
else:
    for e in os.listdir(arg):
        p = os.path.join(arg, e, "METADATA")
        if e.endswith(".dist-info") and os.path.exists(p):
            meta(open(p, "rb").read())
print("\n".join(sorted(found)))
PY
}
# same_dists A B: say whether both installed the same distributions.
same_dists() {
  if dists "$1" >"$work/d1" && dists "$2" >"$work/d2" && [ -s "$work/d1" ] && cmp -s "$work/d1" "$work/d2"; then
    echo "same $(wc -l <"$work/d1") distributions in both"
  else
    echo "DIFFERENT distributions: $(wc -l <"$work/d1") vs $(wc -l <"$work/d2"):"
    diff "$work/d1" "$work/d2" | sed 's/^/  /' | head -20 || true
    FAILED=1
  fi
}

if has_row 0; then
  SIX=(numpy pandas requests scipy matplotlib scikit-learn)
  mkdir -p "$work/r0"
  printf '[image]\nname = "bench/pip-six"\nbase = "%s"\n[pip]\npackages = [%s]\ncompile = false\n' \
    "$BASE" "$(printf '"%s", ' "${SIX[@]}" | sed 's/, $//')" >"$work/r0/kiln.toml"
  cold_pair k0_c u0_c "$work/r0-cold" "$work/r0" six "$work/u0-1" "${SIX[@]}"
  measure k0_w "$work/k0-2.log" kiln_run "$work/r0"
  measure u0_w "$work/u0-2.log" uv_run six "$work/u0-2" "${SIX[@]}"
  pip_alone k0_a "$work/k0-alone" "$work/r0"
  echo "row 0: ${SIX[*]}, pip step, CPython 3.11 manylinux_2_36 x86_64 (cold: medians of $COLD_RUNS)"
  hdr
  line "kiln build, compile = false" "$k0_c" "$k0_w" 1.00 1.00
  line "uv pip install --target" "$u0_c" "$u0_w" \
    "$(ratio "$(secs_of "$u0_c")" "$(secs_of "$k0_c")")" "$(ratio "$(secs_of "$u0_w")" "$(secs_of "$k0_w")")"
  runs_line k0_c u0_c
  alone_line "$k0_a" "$u0_c"
  printf 'check: '; same_dists "oci:$work/r0.out" "$work/u0-2"
  # The layer step in each compression: wheels cached, layers not.
  pip_layers_mb() { # LAYOUT: MB of the layers above the base's
    python3 - "$1" <<'PY'
import json, os, sys
d = sys.argv[1]
blob = lambda dg: os.path.join(d, "blobs", *dg.split(":"))
man = json.load(open(blob(json.load(open(os.path.join(d, "index.json")))["manifests"][0]["digest"])))
print(f"{sum(l['size'] for l in man['layers'][1:]) / 1e6:.1f}")
PY
  }
  relayer() { rm -rf "$work/r0.cache/layers-v1" "$work/r0.cache/stages-v1" "$work/r0.out"
    "$KILN" build "$work/r0/kiln.toml" --quiet --cache "$work/r0.cache" -o "oci:$work/r0.out" --compression "$1"; }
  export -f relayer
  printf '%-42s %8s %12s %10s\n' "layers only, --compression" secs rss_mb layers_mb
  for c in gzip gzip:6 zstd; do
    measure t "$work/k0-$c.log" relayer "$c"
    read -r ts tr <<<"$t"
    printf '%-42s %8s %12s %10s\n' "$c" "$ts" "$tr" "$(pip_layers_mb "$work/r0.out")"
  done
fi

if has_row 1; then
  "$UV" pip compile --quiet $TARGET_FLAGS --no-header --no-annotate "$work/top.in" -o "$work/freeze.txt"
  wheels=$(grep -c '==' "$work/freeze.txt")
  for v in nc c; do
    mkdir -p "$work/r1-$v"
    cp "$work/freeze.txt" "$work/r1-$v/requirements.txt"
    compile=false; [ "$v" = c ] && compile=true
    cat >"$work/r1-$v/kiln.toml" <<TOML
[image]
name = "bench/pip-scale"
base = "$BASE"
[pip]
requirements = ["requirements.txt"]
compile = $compile
TOML
  done
  # The floor under both kiln lines: the same build without [pip] (base
  # pulled from the loopback registry, config and layout written).
  mkdir -p "$work/r1-base"
  printf '[image]\nname = "bench/pip-scale"\nbase = "%s"\n' "$BASE" >"$work/r1-base/kiln.toml"
  measure k_b_c "$work/k-b-1.log" kiln_run "$work/r1-base"
  measure k_b_w "$work/k-b-2.log" kiln_run "$work/r1-base"
  cold_pair k_nc_c u_nc_c "$work/r1-cold" "$work/r1-nc" nc "$work/u-nc-1" -r "$work/freeze.txt"
  measure k_nc_w "$work/k-nc-2.log" kiln_run "$work/r1-nc"
  measure u_nc_w "$work/u-nc-2.log" uv_run nc "$work/u-nc-2" -r "$work/freeze.txt"
  pip_alone k_nc_a "$work/k-nc-alone" "$work/r1-nc"
  # One small wheel of the freeze changed (six, to another release), both
  # caches warm: kiln rebuilds the one shared layer six is in, copying
  # the other wheels' compressed parts; uv installs the whole freeze.
  mkdir -p "$work/r1-bump"
  sed 's/^six==.*/six==OTHER/' "$work/freeze.txt" >"$work/r1-bump/requirements.txt"
  if grep -q '^six==1\.16\.0$' "$work/freeze.txt"; then other=1.17.0; else other=1.16.0; fi
  sed -i "s/^six==OTHER$/six==$other/" "$work/r1-bump/requirements.txt"
  sed 's/^compile = .*/compile = false/' "$work/r1-nc/kiln.toml" >"$work/r1-bump/kiln.toml"
  bump_run() { rm -rf "$work/r1-bump.out"
    "$KILN" build "$work/r1-bump/kiln.toml" --quiet --cache "$work/r1-nc.cache" -o "oci:$work/r1-bump.out"; }
  export -f bump_run
  measure k_bump "$work/k-bump.log" bump_run
  measure u_bump "$work/u-bump.log" uv_run nc "$work/u-bump" -r "$work/r1-bump/requirements.txt"
  measure k_c_c "$work/k-c-1.log" kiln_run "$work/r1-c"
  measure k_c_w "$work/k-c-2.log" kiln_run "$work/r1-c"
  measure u_c_c "$work/u-c-1.log" uv_run c "$work/u-c-1" --compile-bytecode -r "$work/freeze.txt"
  measure u_c_w "$work/u-c-2.log" uv_run c "$work/u-c-2" --compile-bytecode -r "$work/freeze.txt"

  echo "row 1: a $wheels-wheel freeze (top level: $(tr '\n' ' ' <"$work/top.in")), pip step, CPython 3.11 manylinux_2_36 x86_64 (compile = false cold: medians of $COLD_RUNS)"
  hdr
  line "kiln build, base only (no [pip])" "$k_b_c" "$k_b_w" - -
  line "kiln build, compile = false" "$k_nc_c" "$k_nc_w" 1.00 1.00
  line "uv pip install --target" "$u_nc_c" "$u_nc_w" \
    "$(ratio "$(secs_of "$u_nc_c")" "$(secs_of "$k_nc_c")")" "$(ratio "$(secs_of "$u_nc_w")" "$(secs_of "$k_nc_w")")"
  line "kiln build, compile = false, six changed" "-" "$k_bump" - 1.00
  line "uv pip install --target, six changed" "-" "$u_bump" - "$(ratio "$(secs_of "$u_bump")" "$(secs_of "$k_bump")")"
  line "kiln build, compile = true" "$k_c_c" "$k_c_w" 1.00 1.00
  line "uv pip install --target --compile-bytecode" "$u_c_c" "$u_c_w" \
    "$(ratio "$(secs_of "$u_c_c")" "$(secs_of "$k_c_c")")" "$(ratio "$(secs_of "$u_c_w")" "$(secs_of "$k_c_w")")"
  runs_line k_nc_c u_nc_c
  alone_line "$k_nc_a" "$u_nc_c"
  r1_mb=$(mb "$work/u-nc-2")
  echo "installed: uv target $r1_mb MB ($(mb "$work/u-c-2") MB with pycs);" \
    "kiln OCI layout blobs (gzip, base included) $(mb "$work/r1-nc.out/blobs") MB ($(mb "$work/r1-c.out/blobs") MB with pycs)"
  printf 'check (compile = false vs uv): '; same_dists "oci:$work/r1-nc.out" "$work/u-nc-2"
  printf 'check (compile = true vs uv): '; same_dists "oci:$work/r1-c.out" "$work/u-c-2"
  printf 'check (six changed): '; same_dists "oci:$work/r1-bump.out" "$work/u-bump"
  rm -rf "$work"/r1-* "$work"/u-* "$work"/*.uvcache
  echo
fi

if has_row 2; then
  mkdir -p "$work/r2/wheels"
  # BIG_WHEELS valid wheels synthNN-1.0-py3-none-any.whl: 25 files of
  # random bytes (BIG_MB/25 MB each, deflated at level 1 as a wheel tool
  # would, which leaves them their size), a few .py modules, and a
  # dist-info with METADATA, WHEEL and a RECORD of sha256 hashes.
  python3 - "$work/r2/wheels" "$BIG_WHEELS" "$BIG_MB" <<'PY'
import base64, hashlib, os, random, sys, zipfile
out, n, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
files_per, date = 25, (2020, 1, 1, 0, 0, 0)
chunk = mb * 1024 * 1024 // files_per
for i in range(1, n + 1):
    name = f"synth{i:02d}"
    rng = random.Random(i)
    dist = f"{name}-1.0.dist-info"
    record = []
    with zipfile.ZipFile(os.path.join(out, f"{name}-1.0-py3-none-any.whl"), "w") as z:
        def add(path, data, level=6):
            info = zipfile.ZipInfo(path, date)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data, compresslevel=level)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        add(f"{name}/__init__.py", f'"""Synthetic package {i} for benches/pip_scale.sh."""\nfrom .core import size\n'.encode())
        for m in ("core", "util", "io"):
            add(f"{name}/{m}.py", f"import os\n\ndef size():\n    d = os.path.dirname(__file__)\n    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))\n\nNAME = {m!r}\n".encode())
        for k in range(files_per):
            add(f"{name}/data/blob_{k:02d}.bin", rng.randbytes(chunk), level=1)
        add(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nSummary: synthetic {mb} MB wheel\n".encode())
        add(f"{dist}/WHEEL", b"Wheel-Version: 1.0\nGenerator: pip_scale.sh\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        add(f"{dist}/top_level.txt", f"{name}\n".encode())
        record.append(f"{dist}/RECORD,,")
        info = zipfile.ZipInfo(f"{dist}/RECORD", date)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        z.writestr(info, "\n".join(record) + "\n")
PY
  names=$(cd "$work/r2/wheels" && ls ./*.whl | sed 's|^\./||; s|-1\.0-.*||' | sort)
  pkgs=$(printf '"%s", ' $names)
  for v in nc c; do
    mkdir -p "$work/r2-$v"
    ln -s ../r2/wheels "$work/r2-$v/wheels"
    compile=false; [ "$v" = c ] && compile=true
    cat >"$work/r2-$v/kiln.toml" <<TOML
[image]
name = "bench/pip-scale-big"
base = "$BASE"
[pip]
packages = [${pkgs%, }]
find-links = ["wheels"]
no-index = true
compile = $compile
TOML
  done
  wh_mb=$(mb "$work/r2/wheels")
  # Each kiln build's cache and layout go before the next (disk space).
  measure kb_nc "$work/kb-nc.log" kiln_run "$work/r2-nc"
  out_mb=$(mb "$work/r2-nc.out/blobs")
  dists "oci:$work/r2-nc.out" >"$work/big-kiln" 2>/dev/null || true
  # Warm: the same build again, its cache kept (a fresh layout).
  measure kw_nc "$work/kw-nc.log" kiln_run "$work/r2-nc"
  rm -rf "$work/r2-nc.cache" "$work/r2-nc.out"
  measure kb_c "$work/kb-c.log" kiln_run "$work/r2-c"
  out_c_mb=$(mb "$work/r2-c.out/blobs")
  rm -rf "$work/r2-c.cache" "$work/r2-c.out"
  # shellcheck disable=SC2086
  measure u_big "$work/u-big.log" uv_run big "$work/u-big" --find-links "$work/r2/wheels" --no-index $names
  uv_mb=$(mb "$work/u-big")
  dists "$work/u-big" >"$work/big-uv" 2>/dev/null || true
  # shellcheck disable=SC2086
  measure uw_big "$work/uw-big.log" uv_run big "$work/u-big" --find-links "$work/r2/wheels" --no-index $names
  kiln_dists=$(wc -l <"$work/big-kiln"); uv_dists=$(wc -l <"$work/big-uv")
  echo "row 2: $BIG_WHEELS synthetic wheels of ~$BIG_MB MB (wheelhouse $wh_mb MB, random data), local wheelhouse, no index"
  hdr
  read -r ks kr <<<"$kb_nc"; read -r us ur <<<"$u_big"
  line "kiln build, compile = false" "$kb_nc" "$kw_nc" 1.00 1.00
  line "kiln build, compile = true" "$kb_c" "- -" - -
  line "uv pip install --target" "$u_big" "$uw_big" "$(ratio "$us" "$ks")" "$(ratio "$(secs_of "$uw_big")" "$(secs_of "$kw_nc")")"
  echo "installed: kiln OCI layout blobs $out_mb MB ($out_c_mb MB with pycs; $kiln_dists distributions); uv target $uv_mb MB ($uv_dists distributions)"
  if [ "$kiln_dists" = "$BIG_WHEELS" ] && cmp -s "$work/big-kiln" "$work/big-uv"; then
    echo "check: same $kiln_dists distributions in both"
  else
    echo "check: DIFFERENT distributions ($BIG_WHEELS wheels): kiln $kiln_dists, uv $uv_dists"
    FAILED=1
  fi
  if has_row 1; then
    echo "kiln peak RSS (MB), compile = false / true: row 1 cold ($wheels wheels, $r1_mb MB installed)" \
      "${k_nc_c#* } / ${k_c_c#* }; row 2 ($uv_mb MB installed) $kr / ${kb_c#* }"
  fi
fi
exit "$FAILED"

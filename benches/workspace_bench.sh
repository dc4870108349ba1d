#!/usr/bin/env bash
# Issue-16 figures for workspaces (release binary, loopback docker-registry):
#  1. A compat-only change across 5 release images: `kiln build --workspace
#     --since HEAD~1 --push` (a rebase: science layers stay in the registry)
#     against rebuilding the same 5 images with `kiln build --push` from a
#     warm cache. Seconds, peak RSS, bytes uploaded, ratio rebuild/rebase.
#  2. `kiln plan --json` on a generated workspace of 200 members (warm:
#     best of 3 after one run).
# Science images: Debian minbase + python3 (host's apt sources) plus a few
# Debian packages each; compat dirs: files and config only.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/x86_64-unknown-linux-gnu/release/kiln}
[ -x "$KILN" ] || cargo build --release --bin kiln
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; }

work=$(mktemp -d)
REG_PID=''
cleanup() { [ -z "$REG_PID" ] || kill "$REG_PID" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
. benches/lib.sh
start_registry
push_debian_base

g() { git -C "$1" -c user.name=bench -c user.email=bench@example.invalid -c commit.gpgsign=false "${@:2}"; }

# --- 1. rebase vs rebuild -------------------------------------------------
ws=$work/ws
mkdir -p "$ws/compat/site" "$ws/compat/jupyter"
cat > "$ws/kiln-workspace.toml" <<TOML
[workspace]
members = ["science/*"]
compat = ["compat/*"]
registry = "$REG/bench-ws"
TOML
printf '[config]\nenv = { LANG = "C.UTF-8" }\n[[files]]\nsrc = "site.sh"\ndst = "/etc/profile.d/site.sh"\n' > "$ws/compat/site/kiln-compat.toml"
echo 'export SITE=1' > "$ws/compat/site/site.sh"
printf 'includes = ["site"]\n[config]\ncmd = ["python3"]\n[[files]]\nsrc = "start.sh"\ndst = "/usr/local/bin/start-notebook.sh"\nmode = "0755"\n' > "$ws/compat/jupyter/kiln-compat.toml"
echo '#!/bin/sh' > "$ws/compat/jupyter/start.sh"
PKGS=('"python3-numpy"' '"python3-requests"' '"python3-yaml", "python3-six"' '"python3-jinja2"' '"python3-lxml"')
for i in 0 1 2 3 4; do
  mkdir -p "$ws/science/app$i"
  cat > "$ws/science/app$i/kiln.toml" <<TOML
[image]
base = "$REG/bench/debian:base"
[apt]
packages = [${PKGS[$i]}]
[release]
image = "app$i"
version = "1.0"
compat = "jupyter"
TOML
done
g "$ws" init -q && g "$ws" add -A && g "$ws" commit -qm initial
"$KILN" build --workspace "$ws" --push --quiet --cache "$work/kcache" --json > "$work/first.json"

# The same 5 images as plain specs (base + packages + the compat files).
for i in 0 1 2 3 4; do
  mkdir -p "$work/plain/app$i"
  cp "$ws/compat/site/site.sh" "$ws/compat/jupyter/start.sh" "$work/plain/app$i/"
  cat > "$work/plain/app$i/kiln.toml" <<TOML
[image]
base = "$REG/bench/debian:base"
name = "$REG/bench-plain/app$i"
tags = ["1.0"]
[apt]
packages = [${PKGS[$i]}]
[config]
env = { LANG = "C.UTF-8" }
cmd = ["python3"]
[[files]]
src = "site.sh"
dst = "/etc/profile.d/site.sh"
[[files]]
src = "start.sh"
dst = "/usr/local/bin/start-notebook.sh"
mode = "0755"
TOML
done
plain_all() {
  for i in 0 1 2 3 4; do
    "$KILN" build "$work/plain/app$i/kiln.toml" --push --quiet --json --cache "$work/kcache" > "$work/plain/app$i.json" || return 1
  done
}
export -f plain_all; export KILN work
plain_all  # warms the cache (and the registry) for the rebuild

# The compat-only change, the same in both.
echo 'export SITE=2' > "$ws/compat/site/site.sh"
g "$ws" commit -qam "compat change"
for i in 0 1 2 3 4; do cp "$ws/compat/site/site.sh" "$work/plain/app$i/"; done

read -r rs rr < <(secs_rss "$work/rebase.log" "'$KILN' build --workspace '$ws' --since HEAD~1 --push --quiet --json --cache '$work/kcache' > '$work/rebase.json'")
read -r ps pr < <(secs_rss "$work/plain.log" plain_all)
sum_bytes() { python3 -c '
import json, sys
total = 0
for path in sys.argv[1:]:
    v = json.load(open(path))
    for b in v.get("builds", []):
        for k in ("science", "release"):
            total += (b.get(k) or {}).get("bytes_uploaded") or 0
    total += (v.get("push") or {}).get("bytes_uploaded") or 0
print(total)' "$@"; }
rb=$(sum_bytes "$work/rebase.json")
pb=$(sum_bytes "$work"/plain/app?.json)
kinds=$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(" ".join(sorted({b["kind"] for b in v["builds"]})), len(v["builds"]))' "$work/rebase.json")
echo "compat-only change, 5 release images (plan: $kinds)"
printf '%-34s %8s %8s %14s\n' what seconds rss_mb bytes_pushed
printf '%-34s %8s %8s %14s\n' "kiln build --workspace (rebase)" "$rs" "$rr" "$rb"
printf '%-34s %8s %8s %14s\n' "kiln build x5 (rebuild, warm)" "$ps" "$pr" "$pb"
awk -v p="$ps" -v r="$rs" 'BEGIN { printf "ratio rebuild/rebase: %.1fx (goal >= 20x)\n", p / r }'

# --- 2. plan on 200 members -----------------------------------------------
big=$work/big
mkdir -p "$big/compat/c"
printf '[workspace]\nmembers = ["science/*"]\ncompat = ["compat/*"]\nregistry = "registry.example.invalid/big"\n' > "$big/kiln-workspace.toml"
printf '[[files]]\nsrc = "f"\ndst = "/f"\n' > "$big/compat/c/kiln-compat.toml"; echo c > "$big/compat/c/f"
for i in $(seq -w 0 199); do
  d=$big/science/m$i; mkdir -p "$d"; echo "$i" > "$d/data.txt"
  if [ $((10#$i % 10)) -eq 0 ]; then base='scratch'; else base="target:m$(printf %03d $((10#$i - 1)))"; fi
  printf '[image]\nbase = "%s"\n[[files]]\nsrc = "data.txt"\ndst = "/data/%s.txt"\n' "$base" "$i" > "$d/kiln.toml"
  if [ $((10#$i % 10)) -eq 9 ]; then printf '[release]\nimage = "r%s"\nversion = "1.%s"\ncompat = "c"\n' "$i" "$i" >> "$d/kiln.toml"; fi
done
g "$big" init -q && g "$big" add -A && g "$big" commit -qm initial
"$KILN" plan --workspace "$big" --json > /dev/null
best=999
for _ in 1 2 3; do
  read -r s r < <(secs_rss "$work/plan.log" "'$KILN' plan --workspace '$big' --json")
  best=$(awk -v a="$s" -v b="$best" 'BEGIN { print (a < b) ? a : b }')
done
echo "kiln plan --json, 200 members (20 chains of 10, 20 releases): ${best}s warm, best of 3, peak RSS ${r} MB (goal <= 1 s)"

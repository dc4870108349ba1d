#!/usr/bin/env bash
# kiln vs mmdebstrap, same package set, same run:
#   mmdebstrap --variant=minbase --include=python3,ca-certificates SUITE out.tar MIRROR
#   kiln build (scratch + [apt] bootstrap = "minbase", python3 + ca-certificates)
# cold (empty caches) and warm (kiln: warm cache; mmdebstrap: .debs synced in
# from a previous run), printed as ratios mmdebstrap/kiln (>1: kiln is faster),
# with kiln's peak RSS (MB) for each run.
# The mirror is the host's own apt source (no archive address is written here).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/x86_64-unknown-linux-gnu/release/kiln}
SUITE=${SUITE:-bookworm}
command -v mmdebstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap; }
MIRROR=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -1)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
[ -n "$MIRROR" ] || { echo "no host apt source to use as mirror"; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cat > "$work/kiln.toml" <<TOML
[image]
[apt]
bootstrap = "minbase"
suite = "$SUITE"
packages = ["python3", "ca-certificates"]
TOML
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
# rss_mb FILE: the peak RSS (MB) that `/usr/bin/time -f %M -o FILE` wrote.
rss_mb() { echo $(( $(tail -1 "$1") / 1024 )); }

# kiln, cold then warm
rm -rf "$work/kcache"
t0=$(now); /usr/bin/time -f '%M' -o "$work/rss-cold" "$KILN" build "$work/kiln.toml" --quiet --cache "$work/kcache" -o "oci:$work/k1" --json > "$work/k1.json"; t1=$(now)
kiln_cold=$(secs "$t0" "$t1"); kiln_cold_rss=$(rss_mb "$work/rss-cold")
t0=$(now); /usr/bin/time -f '%M' -o "$work/rss-warm" "$KILN" build "$work/kiln.toml" --quiet --cache "$work/kcache" -o "oci:$work/k2" > /dev/null; t1=$(now)
kiln_warm=$(secs "$t0" "$t1"); kiln_warm_rss=$(rss_mb "$work/rss-warm")
pkgs=$(python3 -c "import json,sys; print(len(json.load(open('$work/k1.json'))['apt'][0]['installed']))")
kbytes=$(du -sb "$work/k1/blobs" | cut -f1)

# mmdebstrap, cold then warm (debs synced in from the first run)
mkdir -p "$work/debs"
t0=$(now)
mmdebstrap --quiet --variant=minbase --include=python3,ca-certificates \
  --customize-hook='sync-out /var/cache/apt/archives '"$work/debs" \
  --skip=download/empty "$SUITE" "$work/m1.tar" "$MIRROR" >/dev/null 2>&1
t1=$(now); mm_cold=$(secs "$t0" "$t1")
t0=$(now)
mmdebstrap --quiet --variant=minbase --include=python3,ca-certificates \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
  --setup-hook='sync-in '"$work/debs"' /var/cache/apt/archives' \
  "$SUITE" "$work/m2.tar" "$MIRROR" >/dev/null 2>&1
t1=$(now); mm_warm=$(secs "$t0" "$t1")
mbytes=$(stat -c %s "$work/m1.tar")
mpkgs=$(tar -xOf "$work/m1.tar" ./var/lib/dpkg/status | grep -c '^Package:')

printf 'packages: kiln %s, mmdebstrap %s; output: kiln OCI blobs %s bytes (compressed), mmdebstrap tar %s bytes (uncompressed)\n' "$pkgs" "$mpkgs" "$kbytes" "$mbytes"
printf 'cold: kiln %.2fs (peak RSS %s MB), mmdebstrap %.2fs, ratio %.2fx\n' "$kiln_cold" "$kiln_cold_rss" "$mm_cold" "$(echo "$mm_cold / $kiln_cold" | bc -l)"
printf 'warm: kiln %.2fs (peak RSS %s MB), mmdebstrap %.2fs, ratio %.2fx\n' "$kiln_warm" "$kiln_warm_rss" "$mm_warm" "$(echo "$mm_warm / $kiln_warm" | bc -l)"

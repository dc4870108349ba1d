#!/usr/bin/env bash
# Issue 19's flat memory for `[apt]`: BIG (20) generated .debs of ~BIG_MB
# (100) MB each (one file of random bytes, data.tar in zstd at level 1),
# in a signed repository written and served here on loopback; kiln
# installs them all onto scratch, cold (empty cache) and warm, into an OCI
# layout. Prints seconds and kiln's peak RSS (/usr/bin/time's %M), which
# should not grow with the image (compare apt_compare.sh's minbase).
# No peer: mmdebstrap needs an essential set this repository does not have.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-$PWD/target/x86_64-unknown-linux-gnu/release/kiln}
[ -x "$KILN" ] || cargo build --release --bin kiln
for t in dpkg-deb dpkg-scanpackages gpg; do
  command -v "$t" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev gnupg; }
done
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; }
BIG=${BIG:-20}
BIG_MB=${BIG_MB:-100}
ARCH=$(dpkg --print-architecture)

work=$(mktemp -d)
SERVER_PID=''
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  gpgconf --homedir "$work/gnupg" --kill all 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

# The packages: bigNN 1.0, each with /usr/share/bigNN/data.bin.
repo=$work/repo
mkdir -p "$repo/pool/main" "$repo/dists/stable/main/binary-$ARCH"
for i in $(seq -w 1 "$BIG"); do
  p=$work/pkg/big$i
  mkdir -p "$p/DEBIAN" "$p/usr/share/big$i"
  head -c "$((BIG_MB * 1024 * 1024))" /dev/urandom >"$p/usr/share/big$i/data.bin"
  printf 'Package: big%s\nVersion: 1.0\nArchitecture: %s\nMaintainer: kiln bench <bench@invalid>\nDescription: generated package of %s MB\n' \
    "$i" "$ARCH" "$BIG_MB" >"$p/DEBIAN/control"
  dpkg-deb --root-owner-group -Zzstd -z1 -b "$p" "$repo/pool/main/big${i}_1.0_$ARCH.deb" >/dev/null
  rm -rf "$p"
done

# The indexes, and a Release signed by a key made here.
(cd "$repo" && dpkg-scanpackages --multiversion pool /dev/null 2>/dev/null) >"$repo/dists/stable/main/binary-$ARCH/Packages"
gzip -k -9n "$repo/dists/stable/main/binary-$ARCH/Packages"
{
  printf 'Origin: kiln-bench\nSuite: stable\nCodename: stable\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: %s\nComponents: main\nSHA256:\n' "$ARCH"
  for f in Packages Packages.gz; do
    path=$repo/dists/stable/main/binary-$ARCH/$f
    printf ' %s %s main/binary-%s/%s\n' "$(sha256sum "$path" | cut -d' ' -f1)" "$(stat -c %s "$path")" "$ARCH" "$f"
  done
} >"$repo/dists/stable/Release"
export GNUPGHOME=$work/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key 'kiln bench <bench@invalid>' ed25519 sign never
gpg --batch --quiet --yes --digest-algo SHA256 --output "$repo/dists/stable/InRelease" --clearsign "$repo/dists/stable/Release"
gpg --batch --quiet --export >"$work/key.gpg"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$repo" "$port" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/dists/stable/InRelease" >/dev/null && break; sleep 0.1; done

names=$(for i in $(seq -w 1 "$BIG"); do printf '"big%s", ' "$i"; done)
mkdir -p "$work/spec"
cat >"$work/spec/kiln.toml" <<TOML
[image]
platforms = ["linux/$ARCH"]

[apt]
packages = [${names%, }]
sources = ["deb [signed-by=$work/key.gpg] http://127.0.0.1:$port/ stable main"]
TOML

# run OUT: wall seconds and peak RSS (MB) of one build into OUT.
run() {
  local s e
  sync
  s=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$KILN" build "$work/spec/kiln.toml" --quiet \
    --cache "$work/cache" -o "oci:$work/$1" >/dev/null
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" -v k="$(tail -1 "$work/rss")" 'BEGIN { printf "%.2f %.0f\n", e - s, k / 1024 }'
}
read -r cs cr < <(run cold)
blobs=$(du -sb "$work/cold/blobs" | awk '{ printf "%.0f", $1 / 1048576 }')
read -r ws wr < <(run warm)
echo "apt: $BIG generated packages of $BIG_MB MB (random data), signed loopback repository, onto scratch"
printf '%-8s %9s %9s %12s %12s\n' tool cold_s warm_s cold_rss_mb warm_rss_mb
printf '%-8s %9s %9s %12s %12s\n' kiln "$cs" "$ws" "$cr" "$wr"
echo "layout blobs: $blobs MB"

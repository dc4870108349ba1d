#!/usr/bin/env bash
# Side by side, same tree, same run: kiln's layer pipeline (via `kiln build`)
# against `tar -c | pigz -p2 | sha256sum` (gzip, at kiln's default level 1 and
# at 6) and `tar -c | zstd -T2 | sha256sum`, each at the same level as kiln.
# Prints wall times (best of 3) and the ratio peer/kiln (>1 means kiln is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${KILN_BENCH_TREE:-$PWD/target/bench-tree}
KILN=${KILN:-$PWD/target/x86_64-unknown-linux-gnu/release/kiln}
[ -f "$TREE/.complete" ] || { echo "run 'cargo bench --bench layer_pipeline' first to generate $TREE"; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mb=$(( $(cat "$TREE/.complete") / 1000000 ))
cat > "$work/kiln.toml" <<TOML
[image]
[[files]]
src = "$TREE"
dst = "/bench"
TOML

best() { # best wall time of 3 runs of "$@"
  local b=999999
  for _ in 1 2 3; do
    local s e t
    s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l); b=$(echo "if ($t < $b) $t else $b" | bc -l)
  done
  printf '%.3f' "$b"
}
kiln_run() { rm -rf "$work/cache" "$work/out"; "$KILN" build "$work/kiln.toml" --allow-outside-context --quiet --cache "$work/cache" --output "oci:$work/out" --compression "$1"; }
gz_peer() { tar -C "$TREE" -cf - . | pigz -p2 "-$1" | sha256sum; }
zst_peer() { tar -C "$TREE" -cf - . | zstd -q -3 -T2 | sha256sum; }

command -v pigz >/dev/null || { echo "pigz missing (apt-get install pigz)"; exit 1; }
printf 'tree: %s MB\n' "$mb"
for level in 1 6; do
  k=$(best kiln_run "gzip:$level"); p=$(best gz_peer "$level")
  printf 'gzip -%s: kiln %ss (%.0f MB/s) | tar|pigz -p2|sha256sum %ss (%.0f MB/s) | ratio peer/kiln %.2fx\n' \
    "$level" "$k" "$(echo "$mb / $k" | bc -l)" "$p" "$(echo "$mb / $p" | bc -l)" "$(echo "$p / $k" | bc -l)"
done
if command -v zstd >/dev/null; then
  k=$(best kiln_run zstd); p=$(best zst_peer)
  printf 'zstd: kiln %ss (%.0f MB/s) | tar|zstd -T2|sha256sum %ss (%.0f MB/s) | ratio peer/kiln %.2fx\n' \
    "$k" "$(echo "$mb / $k" | bc -l)" "$p" "$(echo "$mb / $p" | bc -l)" "$(echo "$p / $k" | bc -l)"
fi

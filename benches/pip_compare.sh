#!/usr/bin/env bash
# kiln's [pip] step (benches/pip_resolve.rs: resolve + download + lay out) against
# `uv pip install --target` and `pip install --target` for the same packages, for a
# CPython 3.11 / manylinux_2_36 x86_64 target, cold and warm cache.
# Prints seconds and the ratio peer/kiln (>1 means kiln is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(numpy pandas requests scipy matplotlib scikit-learn)
VENV=$PWD/target/pip-bench-venv
if [ ! -x "$VENV/bin/uv" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q uv
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

secs() { # wall seconds of "$@"
  local s e
  s=$(date +%s.%N); "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; return 1; }; e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'
}
ratio() { awk -v p="$1" -v k="$2" 'BEGIN { printf "%.2f", p / k }'; }

out=$(cargo bench --bench pip_resolve 2>/dev/null)
echo "$out" | head -1
kc=$(sed -n 's/^cold_seconds=//p' <<<"$out")
kw=$(sed -n 's/^warm_seconds=//p' <<<"$out")

# pip takes --platform literally: list every manylinux tag a glibc 2.36 system accepts.
PIP_PLATFORMS=(--platform manylinux2014_x86_64)
for minor in $(seq 17 36); do PIP_PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done

uv_run() { UV_CACHE_DIR="$work/uv-cache" "$VENV/bin/uv" pip install --quiet --target "$1" \
  --python-version 3.11 --python-platform x86_64-manylinux_2_36 "${PKGS[@]}"; }
pip_run() { "$VENV/bin/pip" install --quiet --disable-pip-version-check --cache-dir "$work/pip-cache" \
  --target "$1" --only-binary=:all: --implementation cp --python-version 3.11 \
  "${PIP_PLATFORMS[@]}" "${PKGS[@]}"; }

uc=$(secs uv_run "$work/uv1"); uw=$(secs uv_run "$work/uv2")
pc=$(secs pip_run "$work/pip1"); pw=$(secs pip_run "$work/pip2")

printf '%-6s %9s %9s %12s %12s\n' tool cold_s warm_s cold_ratio warm_ratio
printf '%-6s %9s %9s %12s %12s\n' kiln "$kc" "$kw" 1.00 1.00
printf '%-6s %9s %9s %12s %12s\n' uv "$uc" "$uw" "$(ratio "$uc" "$kc")" "$(ratio "$uw" "$kw")"
printf '%-6s %9s %9s %12s %12s\n' pip "$pc" "$pw" "$(ratio "$pc" "$kc")" "$(ratio "$pw" "$kw")"

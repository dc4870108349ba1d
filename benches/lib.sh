# Shared by the bench scripts (sourced): a loopback docker-registry, the
# Debian base they build on, and a timer. Expects $work (a scratch dir)
# and $KILN; sets $REG (127.0.0.1:PORT) and $REG_PID.

# start_registry: Debian's docker-registry on a free loopback port.
start_registry() {
  command -v docker-registry >/dev/null || { echo "docker-registry missing (make test-deps)"; exit 1; }
  export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/reg.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/reg-data
http:
  addr: 127.0.0.1:$port
YML
  docker-registry serve "$work/reg.yml" >"$work/reg.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
  REG=127.0.0.1:$port
}

# push_debian_base: Debian minbase with python3, from the host's apt
# sources, which it also carries (with the archive keyring) so apt inside
# the image finds the same mirror; pushed as $REG/bench/debian:base.
push_debian_base() {
  mkdir -p "$work/base"
  local sources src_dst
  sources=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  if [ -n "$sources" ]; then
    cp "$sources" "$work/base/host.sources"
    src_dst=/etc/apt/sources.list.d/host.sources
  else
    cp /etc/apt/sources.list "$work/base/host.sources"
    src_dst=/etc/apt/sources.list
  fi
  cat > "$work/base/kiln.toml" <<TOML
[image]
name = "$REG/bench/debian"
tags = ["base"]
[apt]
bootstrap = "minbase"
packages = ["python3", "ca-certificates", "debian-archive-keyring"]
[[files]]
src = "host.sources"
dst = "$src_dst"
TOML
  "$KILN" build "$work/base/kiln.toml" --push --quiet --cache "$work/base-cache" >/dev/null
}

# secs_rss LOG CMD...: wall seconds and peak RSS (MB) of CMD, "S RSS".
# The page cache's dirty pages are written out first (untimed), so that no
# command pays for the writeback of what ran before it (a 2.4 GB wheelhouse
# just generated, the other tool's output).
secs_rss() {
  local log=$1; shift
  local s e
  sync
  s=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" bash -c "$*" >"$log" 2>&1 || { cat "$log" >&2; return 1; }
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" -v k="$(tail -1 "$work/rss")" 'BEGIN { printf "%.2f %.0f\n", e - s, k / 1024 }'
}

#!/usr/bin/env bash
# Issue-14 figures for `kiln serve` (release binary; Debian's docker-registry on a
# random loopback port; each server on a fresh --data dir, SQLite unless said):
#   1. jobs per minute for 20 small specs with 1, 2 and 4 workers; with Postgres and
#      2 `kiln worker` processes when Postgres is installed; and the same specs with a
#      few pip packages on a loopback base image (apt minbase + python3) when the
#      host's apt sources and pip index answer;
#   2. the service's overhead per job: median POST -> succeeded (polled every 20 ms,
#      one job at a time) minus the median wall time of the same `kiln build --push`
#      from the CLI, the two alternating so both see the same machine (goal <= 0.5 s);
#   3. queue latency: jobs submitted to an idle single worker, started - created
#      from the job rows (ms; the API rounds to seconds) (goal <= 1 s);
#   4. API latency p50/p99 for GET and POST /api/v1/specs, 50 loopback clients,
#      bounded in requests and seconds, with wrk (Debian's; installed if missing);
#      POSTs go to a server with --workers 0, so no build runs meanwhile;
#   5. the server process's RSS (VmRSS/VmHWM in /proc) idle, after the API load,
#      and its peak while 4 jobs run (goal <= 50 MB idle), beside one CLI build's
#      peak RSS (/usr/bin/time's maximum resident set size).
# No peer tool serves image builds: each job is compared with the same build from
# the CLI instead. Nothing here asserts a time; the table says which goals were met.
set -euo pipefail
cd "$(dirname "$0")/.."
export KILN=${KILN:-$PWD/target/x86_64-unknown-linux-gnu/release/kiln}
[ -x "$KILN" ] || cargo build --release --bin kiln
JOBS=${JOBS:-20}                     # specs per throughput run
SERIAL=${SERIAL:-10}                 # jobs (and CLI builds) behind each median
API_REQUESTS=${API_REQUESTS:-2000}   # per load run, and at most API_SECONDS long
API_SECONDS=${API_SECONDS:-30}
API_CLIENTS=50
PIP_PACKAGES=${PIP_PACKAGES:-six idna certifi}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

work=$(mktemp -d)
PIDS=() PG_DIR=''
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -z "$PG_DIR" ] || pg_stop
  rm -rf "$work"
}
trap cleanup EXIT
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
export KILN_SERVE_ADMIN_TOKEN=bench-admin-$RANDOM$RANDOM KILN_SERVE_VIEWER_TOKEN=bench-viewer-$RANDOM$RANDOM
unset KILN_SERVE_KILN_BIN KILN_REPO_PREFIX

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }  # $1 pid, $2 VmRSS|VmHWM
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

. benches/lib.sh
start_registry
PIDS+=("$REG_PID")
REG_PORT=${REG#127.0.0.1:}
export KILN_REGISTRY_ENDPOINT=127.0.0.1:$REG_PORT

# The client side: submit specs, poll jobs every 20 ms, read the job rows.
cat > "$work/drive.py" <<'PY'
import http.client, json, os, random, sqlite3, statistics, subprocess, sys, time

TOKEN = os.environ["KILN_SERVE_ADMIN_TOKEN"]
POLL = 0.02
WAIT = 900  # guard against a hang only
FINAL = ("succeeded", "failed", "cancelled")

class Api:
    def __init__(self, port):
        self.port, self.conn = port, None

    def req(self, method, path, body=None):
        for attempt in (1, 2):  # one reconnect if the kept-alive connection was closed
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body=None if body is None else json.dumps(body),
                                  headers={"Authorization": "Bearer " + TOKEN,
                                           "Content-Type": "application/json"})
                r = self.conn.getresponse()
                return r.status, r.read().decode()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise

    def job(self, jid):
        st, text = self.req("GET", f"/api/v1/jobs/{jid}")
        assert st == 200, text
        return json.loads(text)

def spec(name, variant):
    b = {"name": name, "config": {"env": {"KILN_BENCH_SPEC": name}}}
    if variant == "pip":
        b["base"] = os.environ["BENCH_PIP_BASE"]
        b["packages"] = {"pip": os.environ["PIP_PACKAGES"].split()}
    return b

def cli_toml(name, variant):
    """The kiln.toml a worker builds for spec(name, variant) (the CLI side of the comparison)."""
    base = os.environ["BENCH_PIP_BASE"] if variant == "pip" else "scratch"
    lines = ["[image]", f'base = "{base}"',
             f'name = "{os.environ["KILN_REGISTRY_ENDPOINT"]}/cli-{variant}/{name}"',
             'tags = ["r1-00000000", "latest"]', "[config]", f'env = {{ KILN_BENCH_SPEC = "{name}" }}']
    if variant == "pip":
        pkgs = ", ".join(json.dumps(p) for p in os.environ["PIP_PACKAGES"].split())
        lines += ["[pip]", f"packages = [{pkgs}]"]
    return "\n".join(lines) + "\n"

def cli_build(name, variant, d):
    """`kiln build --push` of the same spec from the CLI: wall seconds, peak RSS (kB)."""
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/kiln.toml", "w") as f:
        f.write(cli_toml(name, variant))
    t0 = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f"{d}/rss", os.environ["KILN"], "build",
                        f"{d}/kiln.toml", "--push", "--quiet", "--json", "--cache", f"{d}/cache"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    secs = time.monotonic() - t0
    if r.returncode:
        sys.exit(f"kiln build {name}: {r.stderr}")
    return secs, int(open(f"{d}/rss").read().split()[-1])

def post(api, name, variant):
    st, text = api.req("POST", "/api/v1/specs", spec(name, variant))
    if st != 201:
        sys.exit(f"POST {name}: {st} {text}")
    return json.loads(text)["job"]["id"]

def check(api, jobs):
    bad = [j for j in jobs if j["state"] != "succeeded"]
    for j in bad:
        _, log = api.req("GET", f"/api/v1/jobs/{j['id']}/log?tail=30")
        print(f"job {j['id']} ({j['spec']}): {j['state']}: {j['error']}\n{log}", file=sys.stderr)
    if bad:
        sys.exit(1)

def vm(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def batch(port, count, variant, label, pid):
    """Post `count` specs at once, poll until every job is done: jobs per minute."""
    api, peak = Api(port), 0
    t0 = time.monotonic()
    left = {post(api, f"{label}-{i:02d}", variant) for i in range(count)}
    done = []
    while left:
        if time.monotonic() - t0 > WAIT:
            sys.exit(f"jobs {sorted(left)} not done after {WAIT} s")
        for jid in sorted(left):
            j = api.job(jid)
            if j["state"] in FINAL:
                done.append(j)
                left.discard(jid)
        if pid:
            peak = max(peak, vm(pid, "VmRSS"))
        time.sleep(POLL)
    secs = time.monotonic() - t0
    check(api, done)
    out = {"seconds": secs, "jobs_per_min": count / secs * 60}
    if pid:
        out.update(rss_peak_kb=peak, hwm_kb=vm(pid, "VmHWM"))
    print(json.dumps(out))

def serial(port, count, variant, label, db, cli_dir):
    """One job at a time into an idle worker: POST -> done, and started - created /
    finished - started from the job rows; each job alternates with the same build
    from the CLI, so both see the same machine. Round 0 warms both caches up."""
    api, rnd = Api(port), random.Random(14)
    lat, ids, cli, cli_rss = [], [], [], 0
    for i in range(count + 1):
        if i % 2 == 0:
            c = cli_build(f"{label}-{i:02d}", variant, cli_dir)
        # Let the worker go idle, and land anywhere in its poll interval.
        time.sleep(0.3 + rnd.random() * 0.3)
        t0 = time.monotonic()
        jid = post(api, f"{label}-{i:02d}", variant)
        while (j := api.job(jid))["state"] not in FINAL:
            if time.monotonic() - t0 > WAIT:
                sys.exit(f"job {jid} not done after {WAIT} s: {j}")
            time.sleep(POLL)
        t1 = time.monotonic()
        check(api, [j])
        if i % 2 == 1:
            c = cli_build(f"{label}-{i:02d}", variant, cli_dir)
        if i:
            lat.append(t1 - t0)
            ids.append(jid)
            cli.append(c[0])
            cli_rss = max(cli_rss, c[1])
    con = sqlite3.connect(db)
    rows = con.execute(f"SELECT started - created, finished - started FROM jobs WHERE id IN "
                       f"({','.join('?' * len(ids))})", ids).fetchall()
    queue = [r[0] / 1000 for r in rows]
    print(json.dumps({"median": statistics.median(lat), "cli_median": statistics.median(cli),
                      "cli_rss_kb": cli_rss, "queue_median": statistics.median(queue),
                      "queue_max": max(queue), "run_median": statistics.median([r[1] / 1000 for r in rows])}))

def seed(port, count, label):
    api = Api(port)
    for i in range(count):
        post(api, f"{label}-{i:04d}", "small")

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "batch":
    batch(int(args[0]), int(args[1]), args[2], args[3], int(args[4]) if len(args) > 4 else 0)
elif cmd == "serial":
    serial(int(args[0]), int(args[1]), args[2], args[3], args[4], args[5])
elif cmd == "toml":
    print(cli_toml(args[0], args[1]), end="")
elif cmd == "seed":
    seed(int(args[0]), int(args[1]), args[2])
PY
drive() { python3 "$work/drive.py" "$@"; }

# wrk: each of its 2 threads stops after its half of BENCH_REQUESTS answers
# (-d bounds the time); POST names are unique per thread and request.
cat > "$work/load.lua" <<'LUA'
local n_threads = 0
function setup(thread)
  thread:set("tid", n_threads)
  n_threads = n_threads + 1
end
function init(args)
  budget = math.ceil(tonumber(os.getenv("BENCH_REQUESTS")) / tonumber(os.getenv("BENCH_THREADS")))
  method = os.getenv("BENCH_METHOD")
  auth = "Bearer " .. os.getenv("KILN_SERVE_ADMIN_TOKEN")
  sent, answered = 0, 0
end
function request()
  sent = sent + 1
  local h = {["Authorization"] = auth}
  if method == "POST" then
    local name = string.format("load-%d-%d", tid, sent)
    h["Content-Type"] = "application/json"
    return wrk.format("POST", "/api/v1/specs", h,
      '{"name":"' .. name .. '","config":{"env":{"KILN_BENCH_SPEC":"' .. name .. '"}}}')
  end
  return wrk.format("GET", "/api/v1/specs", h)
end
function response(status, headers, body)
  answered = answered + 1
  if answered >= budget then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("requests=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f bad_status=%d socket_errors=%d\n",
    summary.requests, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
LUA
load() { # $1 GET|POST, $2 port: prints wrk's result line
  BENCH_METHOD=$1 BENCH_REQUESTS=$API_REQUESTS BENCH_THREADS=2 \
    wrk -t2 -c"$API_CLIENTS" -d"${API_SECONDS}s" --timeout 10s -s "$work/load.lua" "http://127.0.0.1:$2/api/v1/specs" |
    grep '^requests='
}
kv() { sed -n "s/.*\b$2=\([^ ]*\).*/\1/p" <<<"$1"; }  # $1 wrk line, $2 key

serve() { # $1 label, $2 workers, [$3 database URL]: a `kiln serve`; sets SVC_PID, SVC_PORT
  local log=$work/$1.log
  mkdir -p "$work/$1"
  KILN_REPO_PREFIX=$1 "$KILN" serve --listen 127.0.0.1:0 --data "$work/$1" --workers "$2" \
    ${3:+--database "$3"} 2>"$log" &
  SVC_PID=$!
  PIDS+=("$SVC_PID")
  SVC_PORT=''
  for _ in $(seq 600); do
    SVC_PORT=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$log")
    [ -n "$SVC_PORT" ] && return 0
    kill -0 "$SVC_PID" 2>/dev/null || break
    sleep 0.05
  done
  cat "$log" >&2
  echo "kiln serve did not start" >&2
  return 1
}
stop() { local p; kill -TERM "$@" 2>/dev/null || true; for p in "$@"; do wait "$p" 2>/dev/null || true; done; }

as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi; }
pg_start() { # a throwaway Postgres on a free loopback port; sets PG_URL
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || return 1
  PG_DIR=$(mktemp -d)   # outside $work: the postgres user must reach it
  [ "$(id -u)" != 0 ] || chown postgres: "$PG_DIR"
  as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U kiln --no-sync >/dev/null || return 1
  local port
  port=$(free_port)
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR" start >/dev/null || return 1
  PG_URL=postgres://kiln@127.0.0.1:$port/postgres
}
pg_stop() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true; rm -rf "$PG_DIR"; PG_DIR=''; }

ROWS=()
row() { ROWS+=("$(printf '%s|%s|%s|%s' "$@")"); }   # what, value, goal, met?
yes_no() { awk -v v="$1" -v g="$2" 'BEGIN { print (v <= g ? "yes" : "NO") }'; }

throughput() { # $1 variant, $2 label suffix: 1, 2 and 4 workers on SQLite
  local n r
  for n in 1 2 4; do
    serve "tp-$1-w$n" "$n"
    r=$(drive batch "$SVC_PORT" "$JOBS" "$1" "s" "$SVC_PID")
    stop "$SVC_PID"
    printf '%-6s %d worker(s), SQLite: %d jobs in %.2f s = %.1f jobs/min\n' "$1" "$n" "$JOBS" \
      "$(field "$r" seconds)" "$(field "$r" jobs_per_min)"
    row "jobs/min, $JOBS $2 specs, $n worker(s), SQLite" "$(printf '%.1f' "$(field "$r" jobs_per_min)")" "-" "-"
    if [ "$1" = small ] && [ "$n" = 4 ]; then PEAK4_KB=$(field "$r" rss_peak_kb); HWM4_KB=$(field "$r" hwm_kb); fi
  done
}

overhead() { # $1 variant, $2 description: service vs CLI, and queue latency
  local r svc cli d q
  serve "oh-$1" 1
  sleep 1
  [ "$1" != small ] || IDLE1_KB=$(status_kb "$SVC_PID" VmRSS)
  r=$(drive serial "$SVC_PORT" "$SERIAL" "$1" "s" "$work/oh-$1/kiln.db" "$work/cli-$1")
  stop "$SVC_PID"
  svc=$(field "$r" median)
  cli=$(field "$r" cli_median)
  d=$(awk -v a="$svc" -v b="$cli" 'BEGIN { print a - b }')
  printf '%-6s overhead: service POST->succeeded median %.3f s, CLI `kiln build --push` median %.3f s, difference %.3f s (%d jobs each; build in the worker: median %.3f s)\n' \
    "$1" "$svc" "$cli" "$d" "$SERIAL" "$(field "$r" run_median)"
  q=$(field "$r" queue_median)
  printf '%-6s queue latency (idle worker, started - created): median %.3f s, max %.3f s\n' "$1" "$q" "$(field "$r" queue_max)"
  row "$2: service POST->succeeded, median" "$(printf '%.3f s' "$svc")" "-" "-"
  row "$2: CLI kiln build --push, median" "$(printf '%.3f s' "$cli")" "-" "-"
  row "$2: service overhead per job" "$(printf '%.3f s' "$d")" "<= 0.5 s" "$(yes_no "$d" 0.5)"
  row "$2: queue latency, median (max)" "$(printf '%.3f s (%.3f s)' "$q" "$(field "$r" queue_max)")" "<= 1 s" "$(yes_no "$(field "$r" queue_max)" 1)"
  [ "$1" != small ] || SMALL_CLI_RSS_KB=$(field "$r" cli_rss_kb)
}

echo "kiln serve bench: $(nproc) cores, registry on 127.0.0.1:$REG_PORT, $JOBS specs per run, medians of $SERIAL"
echo "(no peer tool serves image builds: each job is compared with the same kiln build --push from the CLI)"

# --- 1-3, small specs: scratch + one env var distinct per spec --------------------
throughput small "small"
if pg_start; then
  serve tp-small-pg 0 "$PG_URL"
  W=()
  for i in 1 2; do
    KILN_REPO_PREFIX=tp-small-pg "$KILN" worker --database "$PG_URL" --data "$work/pgw$i" 2>"$work/pgw$i.log" &
    W+=($!)
    PIDS+=($!)
  done
  r=$(drive batch "$SVC_PORT" "$JOBS" small s)
  stop "${W[@]}" "$SVC_PID"
  pg_stop
  printf 'small  Postgres, kiln serve --workers 0 + 2 kiln worker processes: %d jobs in %.2f s = %.1f jobs/min\n' \
    "$JOBS" "$(field "$r" seconds)" "$(field "$r" jobs_per_min)"
  row "jobs/min, $JOBS small specs, Postgres + 2 kiln worker" "$(printf '%.1f' "$(field "$r" jobs_per_min)")" "-" "-"
else
  echo "Postgres run skipped: no /usr/lib/postgresql/*/bin/initdb, or it did not start"
fi
overhead small "small spec"

# --- the same with a few pip packages on a loopback base (apt minbase + python3) ---
mkdir -p "$work/base"
cat > "$work/base/kiln.toml" <<TOML
[image]
name = "127.0.0.1:$REG_PORT/bench/base"
tags = ["latest"]
[apt]
bootstrap = "minbase"
suite = "${SUITE:-bookworm}"
packages = ["python3"]
TOML
export BENCH_PIP_BASE=127.0.0.1:$REG_PORT/bench/base:latest PIP_PACKAGES
if "$KILN" build "$work/base/kiln.toml" --push --quiet --json --cache "$work/base/cache" >/dev/null 2>"$work/base/err"; then
  echo "pip variant: base $BENCH_PIP_BASE (apt minbase + python3, host's apt sources), pip: $PIP_PACKAGES (pip's configured index)"
  drive toml probe pip >"$work/base/probe.toml"
  if "$KILN" build "$work/base/probe.toml" --quiet --cache "$work/base/cache" -o "oci:$work/base/probe" >/dev/null 2>"$work/base/err"; then
    throughput pip "pip ($PIP_PACKAGES)"
    overhead pip "pip spec"
  else
    echo "pip variant skipped: the pip index did not answer: $(tail -1 "$work/base/err")"
  fi
else
  echo "pip variant skipped: the base image (host's apt sources) could not be built: $(tail -1 "$work/base/err")"
fi

# --- 4-5: API latency and server memory, --workers 0 ------------------------------
serve api 0
sleep 1
IDLE0_KB=$(status_kb "$SVC_PID" VmRSS)
drive seed "$SVC_PORT" 100 seed
get=$(load GET "$SVC_PORT")
AFTER_GET_KB=$(status_kb "$SVC_PID" VmRSS)
post=$(load POST "$SVC_PORT")
AFTER_POST_KB=$(status_kb "$SVC_PID" VmRSS)
HWM0_KB=$(status_kb "$SVC_PID" VmHWM)
stop "$SVC_PID"
echo "GET  /api/v1/specs (100 specs listed), $API_CLIENTS clients: $get"
echo "POST /api/v1/specs (unique names, --workers 0), $API_CLIENTS clients: $post"
for m in GET POST; do
  l=$get; [ $m = GET ] || l=$post
  row "$m /api/v1/specs p50 / p99 ($(kv "$l" requests) req, $API_CLIENTS clients)" \
    "$(kv "$l" p50_ms) / $(kv "$l" p99_ms) ms" "-" "$([ "$(kv "$l" bad_status)$(kv "$l" socket_errors)" = 00 ] && echo "all 2xx" || echo "NO: $(kv "$l" bad_status) bad status, $(kv "$l" socket_errors) socket errors")"
done
echo "server RSS: idle after start $(mb "$IDLE0_KB") MB (--workers 0), $(mb "$IDLE1_KB") MB (--workers 1); after the GET load $(mb "$AFTER_GET_KB") MB, after the POST load $(mb "$AFTER_POST_KB") MB (peak $(mb "$HWM0_KB") MB)"
echo "server RSS with 4 workers busy: peak sampled $(mb "$PEAK4_KB") MB, VmHWM $(mb "$HWM4_KB") MB; one CLI build (small spec): max RSS $(mb "$SMALL_CLI_RSS_KB") MB"
row "server RSS idle after start (--workers 1)" "$(mb "$IDLE1_KB") MB" "<= 50 MB" "$(yes_no "$IDLE1_KB" 51200)"
row "server RSS idle after GET load (--workers 0)" "$(mb "$AFTER_GET_KB") MB" "<= 50 MB" "$(yes_no "$AFTER_GET_KB" 51200)"
row "server RSS after POST load (+$(kv "$post" requests) specs)" "$(mb "$AFTER_POST_KB") MB" "-" "-"
row "server RSS peak, 4 jobs running (VmHWM)" "$(mb "$HWM4_KB") MB" "-" "-"
row "one job's own peak (CLI build, small spec)" "$(mb "$SMALL_CLI_RSS_KB") MB" "-" "-"

echo
printf '%s\n' "${ROWS[@]}" | awk -F'|' '
  { w1 = length($1) > w1 ? length($1) : w1; w2 = length($2) > w2 ? length($2) : w2; r[NR] = $0 }
  END {
    printf "%-" w1 "s  %-" w2 "s  %-8s %s\n", "what", "value", "goal", "met?"
    for (i = 1; i <= NR; i++) { split(r[i], f, "|"); printf "%-" w1 "s  %-" w2 "s  %-8s %s\n", f[1], f[2], f[3], f[4] }
  }'

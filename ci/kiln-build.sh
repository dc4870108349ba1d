#!/bin/sh
# Build an image with kiln in CI and push it: the one script behind the
# GitHub Action (action.yml) and the GitLab template (ci/kiln.gitlab-ci.yml),
# so both run exactly the same commands (tests/it/ci_templates.rs runs them).
#
# Settings (environment; all optional):
#   KILN                    a kiln binary to use; empty: build kiln from
#                           KILN_SOURCE with cargo (a static binary, see
#                           .cargo/config.toml)
#   KILN_SOURCE             kiln's source tree [default: this script's ..]
#   CARGO_TARGET_DIR        where cargo builds [default: KILN_SOURCE/target]
#   KILN_SPEC               the spec to build [default: kiln.toml]
#   KILN_PUSH               true: push to the spec's [image] name and tags;
#                           false: write the OCI layout ./kiln-out [default: true]
#   KILN_ARGS               more `kiln build` arguments (split on spaces)
#   KILN_REPORT             where to write kiln's JSON result [default: kiln-report.json]
#   KILN_REGISTRY_USERNAME, KILN_REGISTRY_PASSWORD
#                           registry credentials; read by kiln itself, never
#                           printed or put on a command line
# Outputs: the image digest on the last line of stdout, as `digest=…` in
# $GITHUB_OUTPUT when set, and as KILN_DIGEST=… in kiln.env (a GitLab
# dotenv report).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
source_dir=${KILN_SOURCE:-$here/..}
spec=${KILN_SPEC:-kiln.toml}
push=${KILN_PUSH:-true}
report=${KILN_REPORT:-kiln-report.json}

kiln=${KILN:-}
if [ -z "$kiln" ]; then
  # cargo reads .cargo/config.toml (the static target) from its working
  # directory, so build from inside the source tree.
  echo "kiln-build: building kiln from $source_dir" >&2
  (cd "$source_dir" && cargo build --release --locked --bin kiln)
  kiln=${CARGO_TARGET_DIR:-$source_dir/target}/x86_64-unknown-linux-gnu/release/kiln
fi
if [ ! -x "$kiln" ]; then
  echo "kiln-build: $kiln is not an executable kiln binary (set KILN, or leave it empty to build one)" >&2
  exit 2
fi
"$kiln" --version >&2

if [ -n "${KILN_REGISTRY_USERNAME:-}" ] && [ -z "${KILN_REGISTRY_PASSWORD:-}" ]; then
  echo "kiln-build: KILN_REGISTRY_USERNAME is set but KILN_REGISTRY_PASSWORD is empty (is the secret available to this job?)" >&2
  exit 2
fi

set -- build --json "$spec"
case "$push" in
  true | yes | 1) set -- "$@" --push ;;
  false | no | 0 | "") ;;
  *)
    echo "kiln-build: KILN_PUSH must be true or false, not '$push'" >&2
    exit 2
    ;;
esac
# Word splitting of KILN_ARGS is intended (a list of flags).
# shellcheck disable=SC2086
set -- "$@" ${KILN_ARGS:-}

echo "kiln-build: kiln $*" >&2
status=0
"$kiln" "$@" >"$report" || status=$?
if [ "$status" -ne 0 ]; then
  cat "$report" >&2
  exit "$status"
fi

# Pretty-printed JSON: the image's digest is the top-level (two-space) key.
digest=$(sed -n 's/^  "digest": "\(sha256:[0-9a-f]\{64\}\)".*/\1/p' "$report" | head -n 1)
if [ -z "$digest" ]; then
  echo "kiln-build: no digest in kiln's report $report" >&2
  exit 1
fi
if [ -n "${GITHUB_OUTPUT:-}" ]; then
  echo "digest=$digest" >>"$GITHUB_OUTPUT"
fi
echo "KILN_DIGEST=$digest" >kiln.env
echo "$digest"

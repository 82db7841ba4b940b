#!/bin/sh
# Start `continuum <args>` from this checkout's virtualenv with the settings in $WORKER_ENV_FILE.
# launchd runs this; keeping secrets in a 600-mode env file keeps them out of the plist.
set -eu
repo="$(cd "$(dirname "$0")/../.." && pwd)"
env_file="${WORKER_ENV_FILE:-$HOME/.config/continuum/worker.env}"
if [ ! -r "$env_file" ]; then
  echo "continuum: settings file $env_file not found; create it (see deploy/macos/README.md)" >&2
  exit 78  # EX_CONFIG: launchd's ThrottleInterval keeps it from spinning
fi
set -a
. "$env_file"
set +a
exec "$repo/.venv/bin/continuum" "$@"

#!/usr/bin/env bash
# Set up zsds and process one simulated night end to end on the embedded defaults
# (SQLite database, LocalCluster, alerts to the Avro archive).
#
# Usage: bash deploy/demo-night.sh [WORKDIR]        (default ./zsds-demo)
#
# WORKDIR/incoming  what the camera wrote (simulator output: raw/, refcat/, truth/)
# WORKDIR/archive   the zsds archive (raw/, cal/, sci/, ..., zsds.sqlite)
# WORKDIR/zsds.yaml the configuration used (zsds --config WORKDIR/zsds.yaml ...)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mkdir -p "${1:-zsds-demo}" && cd "${1:-zsds-demo}" && pwd)"
NIGHT=20261121

bash "$REPO/.ci/setup"
export PATH="$REPO/.venv/bin:$PATH"

cat > "$WORK/zsds.yaml" <<YAML
archive:
  root: $WORK/archive
refcat:
  path: $WORK/incoming/refcat
YAML
export ZSDS_CONFIG="$WORK/zsds.yaml"

step() { printf '\n=== %s\n' "$*"; }

step "simulate night $NIGHT (field 655, CCDs 13-14, 4 quadrants of 512x520 each)"
if [ ! -f "$WORK/incoming/truth/exposures.parquet" ]; then
    zsds simulate "$WORK/incoming" --start-night "$NIGHT" --nights 1 --fields 655 \
        --ccds 13,14 --quads 1,2,3,4 --quad-size 512x520 --exposures-per-night 20 \
        --filters zr,zg --n-bias 5 --n-flat 5 --seed 1
fi

step "validate the raw files"
zsds validate-raw --quiet "$WORK/incoming/raw"

step "run the night on a LocalCluster: ingest, calibration images, every quadrant"
zsds run-night "$NIGHT" --incoming "$WORK/incoming/raw" --no-progress

step "what was done"
zsds plan "$NIGHT"

step "done: archive in $WORK/archive (configuration $WORK/zsds.yaml)"

#!/usr/bin/env bash
# Set up zsds and process simulated nights end to end on the embedded defaults
# (SQLite database, LocalCluster, alerts to the Avro archive: no broker configured).
#
# Usage: bash deploy/demo-night.sh [WORKDIR]        (default ./zsds-demo)
#
# Night 1 is processed and its good images co-added into reference images; night 2 is then
# processed through calibration, ZOGY subtraction, candidates, real-bogus and alerts; the
# QA report and the lightcurves of both nights follow.
#
# WORKDIR/incoming  what the camera wrote (simulator output: raw/, refcat/, truth/)
# WORKDIR/archive   the zsds archive (raw/, cal/, sci/, ref/, alerts/, lightcurves/, reports/)
# WORKDIR/zsds.yaml the configuration used (zsds --config WORKDIR/zsds.yaml ...)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mkdir -p "${1:-zsds-demo}" && cd "${1:-zsds-demo}" && pwd)"
N1=20261121
N2=20261122

bash "$REPO/.ci/setup"
export PATH="$REPO/.venv/bin:$PATH"

cat > "$WORK/zsds.yaml" <<YAML
archive:
  root: $WORK/archive
refcat:
  path: $WORK/incoming/refcat
dask:
  dashboard_address: ":0"
YAML
export ZSDS_CONFIG="$WORK/zsds.yaml"

step() { printf '\n=== %s\n' "$*"; }

step "simulate nights $N1-$N2 (field 655, CCD 13, 4 quadrants of 512x520, 10 exposures a night)"
if [ ! -f "$WORK/incoming/truth/exposures.parquet" ]; then
    zsds simulate "$WORK/incoming" --start-night "$N1" --nights 2 --fields 655 \
        --ccds 13 --quads 1,2,3,4 --quad-size 512x520 --exposures-per-night 10 \
        --filters zr --n-bias 5 --n-flat 5 --transients 10 --seed 1
fi

step "validate the raw files"
zsds validate-raw --quiet "$WORK/incoming/raw"

step "night $N1 on a LocalCluster: ingest, calibration images, instrumental calibration"
zsds run-night "$N1" --incoming "$WORK/incoming/raw" --no-progress

step "reference images from night $N1 (Zarr + FITS exports)"
zsds refimg build --min-frames 5

step "night $N2: calibration, subtraction, candidates, alerts"
zsds run-night "$N2" --incoming "$WORK/incoming/raw" --no-progress

step "night QA report"
zsds report "$N2"

step "lightcurves of both nights"
zsds lightcurves build --start "$N1" --end "$N2"

step "done: archive in $WORK/archive (configuration $WORK/zsds.yaml)"
echo "alerts: $(python -c "from zsds.alerts.archive import iter_archive; print(sum(1 for _ in iter_archive('$WORK/archive')))") packets in $(find "$WORK/archive/alerts" -name '*.avro' 2>/dev/null | wc -l) Avro files (one per quadrant image) under $WORK/archive/alerts"
echo "QA report: $WORK/archive/reports/$N2/index.html"

#!/bin/sh
# Tuning sweep: the same upload (direct boto3 floor + gateway) under several gateway
# configs, one bench/run.py invocation each, results labelled sweep-* in bench/results.
# The gateway code is pinned to one commit for the whole sweep.
# Usage: bench/sweep.sh [SIZE] [RUNS] [GIT_REF]   e.g. bench/sweep.sh 512MiB 3 HEAD
set -eu
SIZE=${1:-512MiB}
RUNS=${2:-3}
cd "$(dirname "$0")/.."
REF=$(git rev-parse "${3:-HEAD}")
run() {
    label=$1
    shift
    python bench/run.py --git-ref "$REF" --phases direct,gateway --sizes "$SIZE" \
        --runs "$RUNS" --latency-runs 1 --label "sweep-$label" "$@"
}
run base
run win1m --set server.window_size=1MiB
run win2m --set server.window_size=2MiB
run win32m --set server.window_size=32MiB
run pkt32k --set server.max_packet_size=32KiB
run pkt1m --set server.max_packet_size=1MiB
run part16m --set storage.part_size=16MiB
run part5m --set storage.part_size=5MiB
run conc2 --set storage.max_concurrency=2
run conc8 --set storage.max_concurrency=8
run gcm --ssh-opt=-caes128-gcm@openssh.com
run arena2 --gateway-env MALLOC_ARENA_MAX=2
run mmap1m --gateway-env MALLOC_MMAP_THRESHOLD_=1048576

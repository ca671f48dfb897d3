#!/usr/bin/env bash
# Restarts agents one at a time without losing a session or failing a request: for each
# agent, drain it (its users move to its partner, it leaves and exits), run the restart
# command, and wait until it serves again, paired and synced, before the next one.
#
#   deploy/rolling-restart.sh [--tandem PATH] [--admin-token-file FILE] \
#       --restart 'COMMAND' NODE=ADMIN_URL [NODE=ADMIN_URL ...]
#
# COMMAND is run by sh with every {node} replaced by the node's name; it must start the
# node again (the drained process has exited 0). Examples:
#   systemd:  --restart 'ssh {node} sudo systemctl start tandem-agent'
#   compose:  --restart 'docker start tandem_{node}_1'   (deploy/compose: the restart
#             policy brings a drained container back by itself; this makes sure)
# The tandem binary is found on PATH unless --tandem names it. Stops at the first step
# that fails, leaving the remaining agents untouched.
set -euo pipefail

tandem=tandem
token=()
restart=
nodes=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tandem) tandem=$2; shift 2 ;;
        --admin-token-file) token=(--admin-token-file "$2"); shift 2 ;;
        --restart) restart=$2; shift 2 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *=*) nodes+=("$1"); shift ;;
        *) echo "$0: unexpected argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$restart" ] || [ ${#nodes[@]} -eq 0 ]; then
    echo "$0: need --restart 'COMMAND' and at least one NODE=ADMIN_URL (see --help)" >&2
    exit 2
fi

step=0
for entry in "${nodes[@]}"; do
    node=${entry%%=*}
    admin=${entry#*=}
    step=$((step + 1))
    echo "== [$step/${#nodes[@]}] $node ($admin)"
    # Only a node whose sessions are safe on its partner is taken out.
    "$tandem" wait --admin "$admin"
    "$tandem" drain --admin "$admin" "${token[@]}"
    command=${restart//\{node\}/$node}
    echo "restarting: $command"
    sh -c "$command"
    "$tandem" wait --admin "$admin"
done
echo "== all ${#nodes[@]} agents restarted"

#!/usr/bin/env bash
# Starts or stops the two-subnet cluster of docker-compose.yml. Docker keeps its networks
# apart; `up` lets the two subnets reach each other (as a router between them would) with
# two rules in Docker's DOCKER-USER chain, and `down` removes them with the cluster and its
# volume. Needs root (iptables), docker and docker-compose, and the image
# (deploy/image/build.sh; TANDEM_IMAGE names another tag). The subnets are 172.28.1.0/24
# and 172.28.2.0/24 unless this host already uses them; `up` then takes a free pair and
# says which (TANDEM_NET_A=10.99.1 TANDEM_NET_B=10.99.2 chooses them).
#
#   deploy/compose/cluster.sh up
#   deploy/compose/cluster.sh down
set -euo pipefail
cd "$(dirname "$0")"
project=${TANDEM_COMPOSE_PROJECT:-tandem}

route() { # -I or -D
    for pair in "tandem-a tandem-b" "tandem-b tandem-a"; do
        set -- "$1" $pair
        if [ "$1" = -I ]; then
            iptables -C DOCKER-USER -i "$2" -o "$3" -j ACCEPT 2>/dev/null ||
                iptables -I DOCKER-USER -i "$2" -o "$3" -j ACCEPT
        else
            while iptables -D DOCKER-USER -i "$2" -o "$3" -j ACCEPT 2>/dev/null; do :; done
        fi
    done
}

# IPv4 networks this host already has: Docker's networks and the routes of its interfaces.
taken() {
    docker network ls -q | xargs -r docker network inspect \
        --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}' | tr ' ' '\n' | grep -v ':' || true
    ip -4 route show | awk '$1 != "default" { print $1 }'
}

as_int() {
    local IFS=.
    set -- $1
    echo $((($1 << 24) + ($2 << 16) + ($3 << 8) + $4))
}

overlap() { # CIDR CIDR (a bare address is a /32)
    local a=${1%/*} b=${2%/*} al=32 bl=32
    [[ $1 == */* ]] && al=${1#*/}
    [[ $2 == */* ]] && bl=${2#*/}
    local len=$((al < bl ? al : bl))
    local mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
    [ $(($(as_int "$a") & mask)) -eq $(($(as_int "$b") & mask)) ]
}

# The two /24 subnets, as their first three octets: TANDEM_NET_A and TANDEM_NET_B when set,
# else the first pair of candidates that overlaps nothing this host has.
choose_subnets() {
    if [ -n "${TANDEM_NET_A:-}" ] && [ -n "${TANDEM_NET_B:-}" ]; then return; fi
    local used pair net cidr clash
    used=$(taken)
    for pair in "172.28.1 172.28.2" "10.213.1 10.213.2" "172.29.1 172.29.2" \
        "10.214.1 10.214.2" "192.168.213 192.168.214" "10.215.1 10.215.2"; do
        clash=
        for net in $pair; do
            for cidr in $used; do
                if overlap "$net.0/24" "$cidr"; then clash=$cidr; fi
            done
        done
        if [ -z "$clash" ]; then
            set -- $pair
            export TANDEM_NET_A=$1 TANDEM_NET_B=$2
            return
        fi
    done
    echo "$0: no free pair of /24 subnets; set TANDEM_NET_A and TANDEM_NET_B (e.g. 10.99.1 and 10.99.2)" >&2
    exit 1
}

case "${1:-}" in
    up)
        choose_subnets
        echo "subnets: tandem-a $TANDEM_NET_A.0/24, tandem-b $TANDEM_NET_B.0/24"
        docker-compose -p "$project" up -d --quiet-pull
        route -I
        # The admin token, for tandem drain / ha / keyring from this host.
        docker cp "${project}_a1_1:/data/admin.token" admin.token
        chmod 600 admin.token
        echo "admin token: deploy/compose/admin.token (--admin-token-file)"
        ;;
    down)
        route -D
        docker-compose -p "$project" down -v --remove-orphans
        rm -f admin.token
        ;;
    *)
        echo "usage: $0 up|down" >&2
        exit 2
        ;;
esac

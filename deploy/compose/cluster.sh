#!/usr/bin/env bash
# Starts or stops the two-subnet cluster of docker-compose.yml. Docker keeps its networks
# apart; `up` lets the two subnets reach each other (as a router between them would) with
# two rules in Docker's DOCKER-USER chain, and `down` removes them with the cluster and its
# volume. Needs root (iptables), docker and docker-compose, and the image
# (deploy/image/build.sh; TANDEM_IMAGE names another tag).
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

case "${1:-}" in
    up)
        docker-compose -p "$project" up -d --quiet-pull
        route -I
        ;;
    down)
        route -D
        docker-compose -p "$project" down -v --remove-orphans
        ;;
    *)
        echo "usage: $0 up|down" >&2
        exit 2
        ;;
esac

#!/usr/bin/env bash
# Builds the tandem container image without pulling anything: FROM scratch, with the
# release binary, the shared C libraries it links (as `ldd` lists them), and a non-root
# user (uid 10001) whose home, /data, is where volumes go. No shell, no package manager.
#
#   deploy/image/build.sh              # tags tandem:latest
#   deploy/image/build.sh tandem:1.2   # another tag
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-tandem:latest}

command -v docker >/dev/null || { echo "deploy/image/build.sh: docker is missing" >&2; exit 1; }
cargo build --release --quiet
binary=${CARGO_TARGET_DIR:-target}/release/tandem

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
# The directory's own mode becomes that of / in the image: readable by everyone.
mkdir -m 0755 "$root"
install -D -m 0755 --strip "$binary" "$root/usr/local/bin/tandem"
# The dynamic loader and every library the binary needs, at the paths it looks for them.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    install -D -m 0755 "$lib" "$root$lib"
done
mkdir -p "$root/etc" "$root/tmp" "$context/data"
chmod 1777 "$root/tmp"
echo 'root:x:0:0:root:/:/nonexistent' >"$root/etc/passwd"
echo 'tandem:x:10001:10001:tandem:/data:/nonexistent' >>"$root/etc/passwd"
printf 'root:x:0:\ntandem:x:10001:\n' >"$root/etc/group"
# Host names resolve through /etc/hosts, then DNS (the container runtime provides both).
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
cp deploy/image/Dockerfile "$context/Dockerfile"

docker build --quiet --tag "$tag" "$context" >/dev/null
echo "built $tag: $(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1 / 1e6}')"

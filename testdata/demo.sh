#!/usr/bin/env bash
# End-to-end demo on a fresh Debian machine (as root): a loop-mounted btrfs
# in a temporary directory, the test machine from testdata/machine/build.sh,
# a real bootstrap under QEMU, then the "hello" task in a fresh snapshot,
# served and collected over TFTP. Prints the result manifest; everything is
# cleaned up afterwards.
#
# usage: testdata/demo.sh [TASK-MANIFEST]   (default testdata/demo/hello.manifest)
set -euo pipefail
cd "$(dirname "$0")/.."
task=$(realpath "${1:-testdata/demo/hello.manifest}")
export DEBIAN_FRONTEND=noninteractive PATH="/usr/local/go/bin:$PATH"

[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (loop mount, btrfs)" >&2; exit 1; }
need=()
for p in btrfs-progs qemu-system-x86 busybox-static cpio; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/bbot-demo.XXXXXX)
mnt="$work/mnt"
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

echo "== btrfs on a loop device in $work" >&2
truncate -s 1G "$work/btrfs.img"
mkfs.btrfs -q "$work/btrfs.img"
mkdir "$mnt"
mount -o loop "$work/btrfs.img" "$mnt"

echo "== test machine" >&2
m="$mnt/machines/vol/busybox"
mkdir -p "$m"
btrfs -q subvolume create "$m/busybox-1.0" >/dev/null
testdata/machine/build.sh "$m/busybox-1.0" >&2
btrfs -q property set -ts "$m/busybox-1.0" ro true
ln -s busybox-1.0 "$m/busybox-1"

go build -o "$work/bbot-agent" ./cmd/bbot-agent
version=$("$work/bbot-agent" --version | awk 'NR == 1 {print $2}')
mkdir -p "$mnt/tftp/toolchains/demo"
printf ': 1\nbbot-version: %s\n' "$version" > "$mnt/tftp/toolchains/demo/toolchain"

echo "== bootstrap, then the task (QEMU, TCG, user networking)" >&2
"$work/bbot-agent" --verbose 2 \
  --machines "$mnt/machines" --tftp "$mnt/tftp" --tftp-port 23500 \
  --toolchain-name demo --toolchain-id demo-1 \
  --network user --accel tcg --cpu 1 --ram 524288 \
  --state-dir "$work/state" --run-dir "$work/run" \
  --bootstrap-startup 60 --build-startup 60 --build-timeout 300 \
  --fake-request "$task" --dump-result

#!/usr/bin/env bash
# Fill DIR (an empty directory or btrfs subvolume) with a bootable test
# machine: the Debian cloud kernel, an initrd with busybox, the virtio
# modules the kernel lacks built in, and the test guest worker as /init.
#
# usage: testdata/machine/build.sh DIR [NAME]
#
# Installs what it needs (apt-get, as root). Downloads are cached in
# $BBOT_CACHE (default ~/.cache/bbot-agent-test).
set -euo pipefail
dir=${1:?usage: build.sh DIR [NAME]}
name=${2:-x86_64-linux_test-busybox}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cache=${BBOT_CACHE:-$HOME/.cache/bbot-agent-test}
export DEBIAN_FRONTEND=noninteractive
export PATH="/usr/local/go/bin:$PATH"

need=()
command -v cpio >/dev/null || need+=(cpio)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx ip || need+=(busybox-static)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The kernel: the package linux-image-cloud-amd64 depends on, fetched once.
mkdir -p "$cache"
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$kpkg" ]; then
  apt-get update -qq
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
fi
kdir="$cache/$kpkg"
if [ ! -f "$kdir/done" ]; then
  rm -rf "$kdir" && mkdir -p "$kdir"
  (cd "$kdir" && apt-get download "$kpkg" 2>/dev/null && dpkg-deb -x ./*.deb root && rm -f ./*.deb && touch done)
fi
kver=${kpkg#linux-image-}
modroot="$kdir/root/lib/modules/$kver/kernel"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,modules,etc}

# busybox and its applets.
cp /bin/busybox "$root/bin/busybox"
for applet in sh ip ls cat uname md5sum echo sleep udhcpc; do ln -sf busybox "$root/bin/$applet"; done
# udhcpc's script for guests that take their address by DHCP (the guest's
# plain mode, as unmodified bbot worker images do).
cat > "$root/bin/dhcp-script" <<'SCRIPT'
#!/bin/sh
case "$1" in
bound|renew)
  ip addr add "$ip/${mask:-24}" dev "$interface"
  [ -n "$router" ] && ip route add default via "${router%% *}"
  echo "dhcp: $interface $ip/${mask:-24} via $router"
  ;;
esac
SCRIPT
chmod 755 "$root/bin/dhcp-script"

# The modules the cloud kernel lacks built in, in load order (no modules.dep).
order="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk button evdev"
for m in $order; do
  f=$(find "$modroot" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
  [ -n "$f" ] || { echo "module $m not found in $kpkg" >&2; exit 1; }
  case $f in *.xz) xz -dc "$f" > "$root/modules/$m.ko";; *) cp "$f" "$root/modules/$m.ko";; esac
done
echo "$order" > "$root/modules/order"

# The guest worker as /init.
(cd "$top" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$root/init" ./testdata/guest)

mkdir -p "$dir"
cp "$kdir/root/boot/vmlinuz-$kver" "$dir/vmlinuz"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) > "$dir/initrd.img"

# Machine id: sha256 over the image files' contents in name order.
id=$(cd "$dir" && cat initrd.img vmlinuz | sha256sum | cut -d' ' -f1)
cat > "$dir/manifest" <<MANIFEST
: 1
id: $id
name: $name
summary: busybox test machine with the bbot-agent test guest worker
type: kvm
options: -kernel vmlinuz -initrd initrd.img -append "console=ttyS0 quiet panic=-1 rdinit=/init"
MANIFEST
echo "test machine $name in $dir (kernel $kver)"

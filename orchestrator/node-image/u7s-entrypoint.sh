#!/bin/sh
# u7s node entrypoint: applies what `u7s up` passed in the environment, then
# hands over to the base image's entrypoint ("$@").
set -eu
: "${U7S_HOST_IP:?is set by u7s up: the address other hosts reach this node on}"

# kubelet labels the node with its host's IP (read by `u7s sync-external-ip`)
# and waits for that sync instead of a cloud controller. Our flags are added
# to the base image's own KUBELET_EXTRA_ARGS (kind's sets the runtime's
# cgroup), once: /etc is a volume, so this runs again on every start, and a
# host IP that changed replaces the old one.
defaults="${U7S_KUBELET_DEFAULTS:-/etc/default/kubelet}"
mkdir -p "$(dirname "$defaults")"
touch "$defaults"
extra="$(sed -n 's/^KUBELET_EXTRA_ARGS=//p' "$defaults" | tail -n 1 | tr -d '"')"
kept=""
for arg in $extra; do
	case "$arg" in
	--node-labels=u7s.io/host-ip=* | --cloud-provider=external) ;;
	*) kept="$kept $arg" ;;
	esac
done
{
	grep -v '^KUBELET_EXTRA_ARGS=' "$defaults" || true
	echo "KUBELET_EXTRA_ARGS=${kept# }${kept:+ }--node-labels=u7s.io/host-ip=${U7S_HOST_IP} --cloud-provider=external"
} >"$defaults.u7s"
mv "$defaults.u7s" "$defaults"

# The engine writes a fresh /etc/hosts for every container; the control
# plane's line added by `u7s kubeadm-join` is kept in /etc/u7s/hosts (on the
# /etc volume) and restored here.
if [ -f /etc/u7s/hosts ]; then
	while IFS= read -r line; do
		grep -qxF "$line" /etc/hosts || echo "$line" >>/etc/hosts
	done </etc/u7s/hosts
fi

# VXLAN checksums (see /etc/udev/rules.d/90-u7s-flannel.rules): computed
# in software on flannel.1 when the node runs in a user namespace (a
# rootless engine), unless U7S_VXLAN_TX_CHECKSUM_OFFLOAD=1 keeps the offload.
marker="${U7S_VXLAN_MARKER:-/run/u7s-vxlan-sw-checksum}"
initial_userns="$(cat "${U7S_UID_MAP:-/proc/self/uid_map}" | tr -s ' ' | sed 's/^ //')"
if [ "${U7S_VXLAN_TX_CHECKSUM_OFFLOAD:-0}" != 1 ] && [ "$initial_userns" != "0 0 4294967295" ]; then
	mkdir -p "$(dirname "$marker")"
	touch "$marker"
else
	rm -f "$marker"
fi

exec "$@"

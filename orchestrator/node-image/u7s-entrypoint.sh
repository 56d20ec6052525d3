#!/bin/sh
# u7s node entrypoint: applies what `u7s up` passed in the environment, then
# hands over to the base image's entrypoint ("$@").
set -eu
: "${U7S_HOST_IP:?is set by u7s up: the address other hosts reach this node on}"

# kubelet labels the node with its host's IP (read by `u7s sync-external-ip`)
# and waits for that sync instead of a cloud controller.
mkdir -p /etc/default
echo "KUBELET_EXTRA_ARGS=--node-labels=u7s.io/host-ip=${U7S_HOST_IP} --cloud-provider=external" >/etc/default/kubelet

# The engine writes a fresh /etc/hosts for every container; the control
# plane's line added by `u7s kubeadm-join` is kept in /etc/u7s/hosts (on the
# /etc volume) and restored here.
if [ -f /etc/u7s/hosts ]; then
	while IFS= read -r line; do
		grep -qxF "$line" /etc/hosts || echo "$line" >>/etc/hosts
	done </etc/u7s/hosts
fi

exec "$@"

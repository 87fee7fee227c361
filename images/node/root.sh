#!/bin/sh
# The node root: the base image minus what a node never runs. The harness runs this script
# once per base image in a throw-away container of the base and imports the container's file
# system as `<prefix>-node-root:<hash>` (one layer: removed files take no room), while cargo
# compiles the node binaries; the node image (Dockerfile here) only adds the binaries and the
# configuration on top of it (harness::images::ensure_node_root).
set -e
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# A stock Debian image (e.g. debian:bookworm-slim) lacks the node's packages: add them.
if ! command -v etcd >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    etcd-server etcd-client openssh-server openssh-client iproute2 iptables ca-certificates procps curl
  rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*
fi
# A node runs etcd, sshd and ssh, iptables, curl, useradd and the workspace binaries. It never
# runs Python (the base image carries it for students' submissions, which are built on the
# base image, not on this one), Perl, apt, the openssl command, e2fsprogs, time zones other
# than UTC or character sets other than UTF-8 (glibc's own). Their packages go without their
# maintainer scripts (which could need what is being removed).
drop=$(dpkg-query -W -f '${Package}\n' | grep -E '^((lib)?python3.*|perl-base|perl-modules-.*|libperl.*|debconf|apt|libapt-pkg.*|apt-utils|gpgv|debian-archive-keyring|openssl|tzdata|e2fsprogs|logsave|libext2fs2|libss2)$' || true)
if [ -n "$drop" ]; then
  for p in $drop; do
    rm -f /var/lib/dpkg/info/$p.prerm /var/lib/dpkg/info/$p.postrm \
      /var/lib/dpkg/info/$p:*.prerm /var/lib/dpkg/info/$p:*.postrm
  done
  # shellcheck disable=SC2086
  dpkg --purge --force-depends --force-remove-essential $drop
fi
rm -rf /usr/lib/python3* /usr/local/lib/python3* /usr/lib/x86_64-linux-gnu/gconv /usr/share/zoneinfo \
  /var/lib/apt /var/cache/apt /var/cache/debconf /var/lib/dpkg/*-old /var/log/*

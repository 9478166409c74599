#!/usr/bin/env bash
# Installs everything Yunhan needs on a Debian machine (as root): system packages
# for the data plane, PostgreSQL and tests, and a virtualenv with the package and its pinned
# dependencies. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

need_apt=()
# systemd-analyze: the tests verify the units `yunhan install-units` writes (offline).
# keepalived: tests/e2e/test_vips.py and bench/vip_failover.py run it inside instances.
# wrk: load for the function autoscaler (tests/e2e/test_functions.py, bench/functions.py).
# make, pkg-config, fuse3 (fusermount3) and the libfuse3/zlib headers: yunhan-cdpd, the storage
# process of volumes (native/cdpd), built below; losetup and mkfs.ext4 put filesystems on them.
# fio: bench/volumes.py measures protected volumes against unprotected ones with it.
# frr (vtysh, /usr/lib/frr/bgpd …): BGP of hybrid gateway replicas and of the lab's IDC sites,
# one instance per namespace (yunhan.net.frr); its system service is not used.
# netconfd, netconf-subsystem and sshd: the NETCONF switch of each lab IDC site
# (yunhan.lab.netconfsw), inside the site router's namespace; the system's sshd is not used.
# nats-server: the queue of dual write (yunhan.lab.dualwrite), one per lab region on loopback.
# chromium: tests/browser and bench/console.py drive Debian's browser with Playwright (no
# browser download: Playwright is pointed at /usr/bin/chromium).
# ethtool and perf (linux-perf): bench/eastwest.py toggles offloads on the lab's devices and
# profiles where each path's cycles go.
# clang, libbpf-dev (bpf_helpers.h) and bpftool: the agents compile and load the tc-BPF fast
# path (yunhan/net/bpf/fastpath.c, docs/datapath.md); without them they use the kernel path.
for bin in clang:clang bpftool:bpftool ethtool:ethtool perf:linux-perf /usr/bin/chromium:chromium /usr/sbin/nats-server:nats-server /usr/sbin/netconfd:netconfd /usr/sbin/sshd:openssh-server vtysh:frr ip:iproute2 nft:nftables iperf3:iperf3 ping:iputils-ping gcc:gcc unshare:util-linux nsenter:util-linux systemd-analyze:systemd curl:curl nmap:nmap conntrack:conntrack keepalived:keepalived wrk:wrk make:make pkg-config:pkg-config fusermount3:fuse3 losetup:mount mkfs.ext4:e2fsprogs fio:fio; do
  command -v "${bin%%:*}" >/dev/null 2>&1 || need_apt+=("${bin##*:}")
done
[ -e /usr/lib/x86_64-linux-gnu/libnftables.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/libnftables.so.1 ] || need_apt+=(libnftables1)
# PostgreSQL server (tests and the multi-replica control plane start throwaway clusters with
# yunhan.store.pgserver). Debian keeps initdb and pg_ctl off PATH, under
# /usr/lib/postgresql/<version>/bin; the package also creates the `postgres` user.
have_pg=no
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && have_pg=yes
done
getent passwd postgres >/dev/null 2>&1 || have_pg=no
[ "$have_pg" = yes ] || need_apt+=(postgresql)
# The AI services (extra `ai`): opencv-python's cv2 links libGL and glib's libgthread;
# the tests synthesise speech with espeak-ng and render Chinese with WenQuanYi Zen Hei.
# libfuse3-dev and zlib1g-dev: the headers yunhan-cdpd is built with.
for pkg in libgl1 libglib2.0-0 espeak-ng fonts-wqy-zenhei libfuse3-dev zlib1g-dev libbpf-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  if [[ " ${need_apt[*]} " == *" keepalived "* ]]; then
    # Only instances run keepalived, each with its own configuration: the package's system
    # service (enabled, and started where policy allows) must neither run nor come back at
    # boot. Without systemd as PID 1, `--now` fails: disable offline, stop by the init script.
    systemctl disable --now keepalived >/dev/null 2>&1 \
      || systemctl disable keepalived >/dev/null 2>&1 || true
    if [ -x /etc/init.d/keepalived ]; then
      /etc/init.d/keepalived stop >/dev/null 2>&1 || true
    fi
  fi
  if [[ " ${need_apt[*]} " == *" openssh-server "* ]]; then
    # Installed here for the lab's switches only: the package's service (sshd on port 22 of
    # the machine) must not start nor come back. A machine that had sshd before is untouched.
    systemctl disable --now ssh >/dev/null 2>&1 || systemctl disable ssh >/dev/null 2>&1 || true
    if [ -x /etc/init.d/ssh ]; then
      /etc/init.d/ssh stop >/dev/null 2>&1 || true
    fi
  fi
  if [[ " ${need_apt[*]} " == *" nats-server "* ]]; then
    systemctl disable --now nats-server >/dev/null 2>&1 || systemctl disable nats-server >/dev/null 2>&1 || true
    if [ -x /etc/init.d/nats-server ]; then
      /etc/init.d/nats-server stop >/dev/null 2>&1 || true
    fi
  fi
  if [[ " ${need_apt[*]} " == *" frr "* ]]; then
    # The same for FRR: Yunhan starts its own daemons inside namespaces (`-N <netns>`, a
    # config of its own); the system's (zebra in the root namespace) must not run.
    systemctl disable --now frr >/dev/null 2>&1 || systemctl disable frr >/dev/null 2>&1 || true
    if [ -x /etc/init.d/frr ]; then
      /etc/init.d/frr stop >/dev/null 2>&1 || true
    fi
  fi
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
if ! .venv/bin/python -c 'import yunhan, fastapi, pyroute2, pytest, cv2, rapidocr_onnxruntime, pocketsphinx' >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ]; then
  if ! .venv/bin/pip install -q --disable-pip-version-check -e ".[dev,ai]" >.venv/pip.log 2>&1; then
    grep -v "WARNING: Location" .venv/pip.log >&2
    echo "install.sh: pip install failed (log: .venv/pip.log)" >&2
    exit 1
  fi
  touch .venv/.installed
fi
ln -sf "$top/.venv/bin/yunhan" /usr/local/bin/yunhan
# yunhan-cdpd (yunhan.volume.cdpd finds it in native/cdpd; make rebuilds only when cdpd.c changed).
make -s -C native/cdpd yunhan-cdpd

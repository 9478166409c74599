#!/bin/bash
# A probe, not the fast path: the upper bound a tc-BPF bypass of the VPC namespace could give
# (issue 19). It skips security groups, conntrack, route tables and flow logs altogether, so it
# must never run where those matter. On a lab region of 2 zones x 1 host with VPC 10.77.0.0/16,
# instance A on az1-h1 and C on az2-h1 (subnet gateway 10.77.1.1, VNI 1):
#   apt-get install -y clang libbpf-dev bpftool
#   for h in az1 az2; do for k in PORT TUN; do clang -O2 -target bpf \
#     -I/usr/include/x86_64-linux-gnu -D$k -DMAPNAME=fp_routes_$h -DMDNAME=fp_md_$h \
#     -c fp.c -o /tmp/fp/fp_${h}_$k.o; done; done
#   unshare -m --propagation private ./probe.sh PREFIX A_NETNS C_NETNS A_IP C_IP CMD...
# It adds a collect-metadata VXLAN device (UDP 4790) to each VPC namespace, programs on the
# instances' VPC-side veths (encapsulate with a tunnel key, redirect) and on that device
# (bpf_redirect_peer into the instance), fills the maps with bpftool, then runs CMD (iperf3
# rounds). bpffs is mounted in the private mount namespace only; nsenter --net keeps it.
# Remove afterwards: `ip -n <vpc ns> link del fpmd; tc qdisc del dev <port> clsact`.
set -e
P=$1; A=$2; C=$3; AIP=$4; CIP=$5
mount -t bpf bpf /sys/fs/bpf
n(){ nsenter --net=/run/netns/$1 "${@:2}"; }
ipkey(){ python3 -c "import ipaddress,sys;print(' '.join(f'{b:02x}' for b in ipaddress.IPv4Address(sys.argv[1]).packed))" $1; }
le(){ python3 -c "import struct,sys;print(' '.join(f'{b:02x}' for b in struct.pack('<I', int(sys.argv[1]))))" $1; }
mac(){ echo $1 | tr ':' ' '; }
ul(){ python3 -c "import ipaddress,sys;print(int(ipaddress.IPv4Address(sys.argv[1])))" $1; }
declare -A VPC HOST PORT INST IP REMOTE
VPC[az1]=$P-az1-h1-v1; VPC[az2]=$P-az2-h1-v1; HOST[az1]=$P-az1-h1; HOST[az2]=$P-az2-h1
INST[az1]=$A; INST[az2]=$C; IP[az1]=$AIP; IP[az2]=$CIP; REMOTE[az1]=198.18.1.11; REMOTE[az2]=198.18.2.11
for h in az1 az2; do
  ip -n ${HOST[$h]} link add fpmd type vxlan external dstport 4790
  ip -n ${HOST[$h]} link set fpmd netns ${VPC[$h]}
  ip -n ${VPC[$h]} link set fpmd mtu 1450 up
  PORT[$h]=$(ip -n ${VPC[$h]} -br link | awk '/^p-/{print $1}' | cut -d@ -f1)
done
for h in az1 az2; do
  o=$([ $h = az1 ] && echo az2 || echo az1)
  n ${VPC[$h]} tc qdisc add dev ${PORT[$h]} clsact
  n ${VPC[$h]} tc filter add dev ${PORT[$h]} ingress bpf da obj /tmp/fp/fp_${h}_PORT.o sec tc
  n ${VPC[$h]} tc qdisc add dev fpmd clsact
  n ${VPC[$h]} tc filter add dev fpmd ingress bpf da obj /tmp/fp/fp_${h}_TUN.o sec tc
  md=$(ip -n ${VPC[$h]} -o link show fpmd | cut -d: -f1)
  pidx=$(ip -n ${VPC[$h]} -o link show ${PORT[$h]} | cut -d: -f1)
  imac=$(ip -n ${INST[$h]} -br link show eth0 | awk '{print $3}')
  gmac=$(ip -n ${INST[$h]} neigh show 10.77.1.1 | awk '{print $5}')
  [ -n "$gmac" ] || gmac=$(ip -n ${VPC[$h]} -br link show ${PORT[$h]} | awk '{print $3}')
  bpftool map update pinned /sys/fs/bpf/tc/globals/fp_md_$h key hex 00 00 00 00 value hex $(le $md)
  # local instance: deliver into its eth0
  bpftool map update pinned /sys/fs/bpf/tc/globals/fp_routes_$h key hex $(ipkey ${IP[$h]}) value hex 00 00 00 00 $(le 1) $(le $pidx) $(mac $imac) $(mac $gmac)
  # the other zone's instance: encapsulate to its host
  bpftool map update pinned /sys/fs/bpf/tc/globals/fp_routes_$h key hex $(ipkey ${IP[$o]}) value hex $(le $(ul ${REMOTE[$o]})) $(le 1) 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
done
echo installed
"${@:6}"

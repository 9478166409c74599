// SPDX-License-Identifier: GPL-2.0
// Yunhan's data-plane fast path (docs/datapath.md). Two tcx ingress programs per VPC
// namespace, filled by the agent from the host document (yunhan/net/fastpath.py):
//
//   yh_from_port    on every instance port (the VPC side of its veth): a packet from the
//                   instance whose source (port, address, MAC) is the instance's own and
//                   whose destination the maps name is delivered straight to the peer of
//                   the destination's port (same host) or encapsulated through vxlan0
//                   (another host), as the VPC namespace's routing would;
//   yh_from_tunnel  on vxlan0: a decapsulated packet for an eligible local port, not
//                   flagged routed (GBP mark 0), goes straight into the instance.
//
// A port with security groups is taken only for flows its conntrack already let through
// (bpf_skb_ct_lookup): a reply of an established flow, or an established flow stamped
// with the current rule generation, as the `fwd` chain of yunhan.net.nftsg accepts them;
// the fast path refreshes the entry's timeout as the kernel path would. SYN, FIN and RST
// segments, ICMP and fragments always take the kernel path, so conntrack sees every flow
// begin and end.
//
// Anything else (ARP, a source the maps do not vouch for, a destination they do not name,
// TTL <= 1, a routed mark) returns TCX_NEXT: the kernel path, with its port filters, route
// tables, security groups, NAT and flow logs, decides it. The fast path never drops.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TCX_NEXT -1
#define FROM_TUNNEL 0xffffffffu  /* dst key table of the tunnel's entries */
#define NEEDS_CT 1               /* src flags, dst peer bit 1: a port with security groups */
#define IPS_ASSURED (1 << 2)
#define IP_CT_DIR_REPLY 1

/* The kernel's conntrack entry: only what we read, placed by CO-RE from the kernel's BTF. */
struct nf_conn {
	unsigned long status;
	__u32 mark;
} __attribute__((preserve_access_index));

struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *, struct bpf_sock_tuple *, __u32,
					 struct bpf_ct_opts *, __u32) __ksym;
extern void bpf_ct_release(struct nf_conn *) __ksym;
extern int bpf_ct_change_timeout(struct nf_conn *, __u32) __ksym;

/* The VPC namespace's firewall: its conntrack zone, its rule generation (nftsg), and the
   timeouts conntrack gives established TCP and UDP streams there (ms). gen 0: none. */
struct cfg {
	__u32 zone;
	__u32 gen;
	__u32 tcp_ms;
	__u32 udp_ms;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cfg);
} yh_cfg SEC(".maps");

struct src_key {
	__u32 ifindex;  /* the instance's port in this namespace */
	__u32 ip;       /* network order */
};

struct src_val {
	__u8 mac[6];    /* the instance's MAC */
	__u16 flags;    /* NEEDS_CT */
	__u32 table;    /* its subnet's route table index (0: main only) */
};

struct dst_key {
	__u32 table;    /* the sender's table, or FROM_TUNNEL */
	__u32 ip;       /* network order */
};

struct dst_val {
	__u32 oif;      /* local: the destination's port; remote: vxlan0 */
	__u32 peer;     /* bit 0: redirect into the port's peer (the instance), else out of oif;
			   bit 1: the destination's port has security groups (NEEDS_CT << 1) */
	__u8 dmac[6];   /* local: the instance's MAC; remote: the far host's VTEP MAC */
	__u8 smac[6];   /* local: the port's own MAC; remote: this host's VTEP MAC */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct src_key);
	__type(value, struct src_val);
} yh_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dst_key);
	__type(value, struct dst_val);
} yh_dst SEC(".maps");

/* Address pairs (source, destination) the kernel path must carry for now: `yunhan trace
   --live` watches a probe in the kernel path's hooks (yunhan.net.fastpath.kernel_path_for). */
struct pair {
	__u32 src;
	__u32 dst;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct pair);
	__type(value, __u32);
} yh_kernel SEC(".maps");

/* The IDC prefixes whose traffic hosts count in nftables (docs/cutover.md): a packet from
   or to one takes the kernel path, where it is counted. */
struct lpm_v4 {
	__u32 prefixlen;
	__u32 addr;  /* network order */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct lpm_v4);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} yh_counted SEC(".maps");

/* packets: 0 delivered on this host, 1 encapsulated, 2 decapsulated and delivered,
   3 handed to the kernel path */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} yh_stats SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *n = bpf_map_lookup_elem(&yh_stats, &i);
	if (n)
		*n += 1;
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline int slow(void)
{
	count(3);
	return TCX_NEXT;
}

#define IP_OFF sizeof(struct ethhdr)
#define TTL_OFF (IP_OFF + offsetof(struct iphdr, ttl))
#define CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))

/* The IPv4 header of a unicast frame for us with TTL > 1, not pinned to the kernel path,
   or NULL. */
static __always_inline struct iphdr *ipv4(struct __sk_buff *skb, struct ethhdr **eth)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *e = data;
	struct iphdr *ip = data + sizeof(*e);
	if ((void *)(ip + 1) > end || e->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	/* IP options (source routing, ...) and tagged frames are the kernel's to judge */
	if (skb->pkt_type != PACKET_HOST || skb->vlan_present || ip->version != 4 ||
	    ip->ihl != 5 || ip->ttl <= 1)
		return 0;
	struct pair p = {.src = ip->saddr, .dst = ip->daddr};
	if (bpf_map_lookup_elem(&yh_kernel, &p))
		return 0;
	struct lpm_v4 from = {.prefixlen = 32, .addr = ip->saddr};
	struct lpm_v4 to = {.prefixlen = 32, .addr = ip->daddr};
	if (bpf_map_lookup_elem(&yh_counted, &from) || bpf_map_lookup_elem(&yh_counted, &to))
		return 0;
	*eth = e;
	return ip;
}

/* Has conntrack (zone and generation of yh_cfg) already accepted this packet's flow, as
   the security groups' `fwd` chain would? Refreshes the entry's timeout if so. */
static __always_inline int ct_accepted(struct __sk_buff *skb, struct iphdr *ip)
{
	void *end = (void *)(long)skb->data_end;
	struct bpf_sock_tuple t = {};
	__u32 zero = 0, ms;
	struct cfg *c = bpf_map_lookup_elem(&yh_cfg, &zero);
	if (!c || !c->gen || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return 0;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = (void *)(ip + 1);
		if ((void *)(th + 1) > end || th->syn || th->fin || th->rst)
			return 0;
		t.ipv4.sport = th->source;
		t.ipv4.dport = th->dest;
		ms = c->tcp_ms;
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *uh = (void *)(ip + 1);
		if ((void *)(uh + 1) > end)
			return 0;
		t.ipv4.sport = uh->source;
		t.ipv4.dport = uh->dest;
		ms = c->udp_ms;
	} else {
		return 0;
	}
	t.ipv4.saddr = ip->saddr;
	t.ipv4.daddr = ip->daddr;
	struct bpf_ct_opts o = {.netns_id = -1, .l4proto = ip->protocol, .ct_zone_id = c->zone};
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &t, sizeof(t.ipv4), &o, sizeof(o));
	if (!ct)
		return 0;
	/* Assured: conntrack saw the handshake end (TCP) or the stream settle (UDP), so the
	   kernel path keeps the entry as the flow it is. */
	int ok = (ct->status & IPS_ASSURED) && (o.dir == IP_CT_DIR_REPLY || ct->mark == c->gen);
	if (ok)
		bpf_ct_change_timeout(ct, ms);
	bpf_ct_release(ct);
	return ok;
}

/* What routing in the VPC namespace does to the frame, then the jump past it. */
static __always_inline int forward(struct __sk_buff *skb, struct dst_val *d, __u8 ttl, __u32 n)
{
	__u16 old = bpf_htons((__u16)ttl << 8), new = bpf_htons((__u16)(ttl - 1) << 8);
	__u8 t = ttl - 1;
	if (bpf_l3_csum_replace(skb, CSUM_OFF, old, new, 2) < 0 ||
	    bpf_skb_store_bytes(skb, TTL_OFF, &t, 1, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, d->dmac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, d->smac, 6, 0) < 0)
		return TC_ACT_SHOT;  /* half rewritten: not a frame the kernel path could take */
	count(n);
	if (d->peer & 1)
		return bpf_redirect_peer(d->oif, 0);
	skb->mark = 0;  /* direct delivery: no GBP "routed" flag, as the kernel path sends it */
	return bpf_redirect(d->oif, 0);
}

SEC("tc")
int yh_from_port(struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct iphdr *ip = ipv4(skb, &eth);
	if (!ip)
		return slow();
	struct src_key sk = {.ifindex = skb->ifindex, .ip = ip->saddr};
	struct src_val *s = bpf_map_lookup_elem(&yh_src, &sk);
	if (!s || !same_mac(s->mac, eth->h_source))
		return slow();
	struct dst_key dk = {.table = s->table, .ip = ip->daddr};
	struct dst_val *d = bpf_map_lookup_elem(&yh_dst, &dk);
	if (!d)
		return slow();
	if (((s->flags & NEEDS_CT) || (d->peer & (NEEDS_CT << 1))) && !ct_accepted(skb, ip))
		return slow();
	return forward(skb, d, ip->ttl, (d->peer & 1) ? 0 : 1);
}

SEC("tc")
int yh_from_tunnel(struct __sk_buff *skb)
{
	struct ethhdr *eth;
	if (skb->mark != 0)
		return slow();  /* flagged routed: the route tables decide it */
	struct iphdr *ip = ipv4(skb, &eth);
	if (!ip)
		return slow();
	struct dst_key dk = {.table = FROM_TUNNEL, .ip = ip->daddr};
	struct dst_val *d = bpf_map_lookup_elem(&yh_dst, &dk);
	if (!d || !(d->peer & 1))
		return slow();
	if ((d->peer & (NEEDS_CT << 1)) && !ct_accepted(skb, ip))
		return slow();
	return forward(skb, d, ip->ttl, 2);
}

char _license[] SEC("license") = "GPL";

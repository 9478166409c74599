// Prototype only: the upper bound of a tc-BPF fast path (no security groups, no conntrack).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct route {
	__u32 remote;   /* host order underlay address of the far host; 0: local */
	__u32 vni;
	__u32 ifindex;  /* local: the VPC-side veth of the instance (its peer is eth0) */
	__u8 mac[6];    /* local: the instance's MAC */
	__u8 gw[6];     /* the gateway MAC instances see */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct route);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} MAPNAME SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} MDNAME SEC(".maps");

static __always_inline struct route *lookup(struct __sk_buff *skb, struct ethhdr **eth)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *e = data;
	struct iphdr *ip = data + sizeof(*e);
	if ((void *)(ip + 1) > end || e->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	*eth = e;
	__u32 dst = ip->daddr;
	return bpf_map_lookup_elem(&MAPNAME, &dst);
}

#ifdef PORT
SEC("tc")
int from_port(struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct route *r = lookup(skb, &eth);
	if (!r)
		return TC_ACT_OK;
	if (r->remote) {
		struct bpf_tunnel_key key = {};
		__u32 zero = 0, *md = bpf_map_lookup_elem(&MDNAME, &zero);
		if (!md || !*md)
			return TC_ACT_OK;
		key.remote_ipv4 = r->remote;
		key.tunnel_id = r->vni;
		key.tunnel_ttl = 64;
		if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), 0) < 0)
			return TC_ACT_OK;
		return bpf_redirect(*md, 0);
	}
	__builtin_memcpy(eth->h_dest, r->mac, 6);
	__builtin_memcpy(eth->h_source, r->gw, 6);
	return bpf_redirect_peer(r->ifindex, 0);
}
#else
SEC("tc")
int from_tunnel(struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct route *r = lookup(skb, &eth);
	if (!r || r->remote)
		return TC_ACT_OK;
	__builtin_memcpy(eth->h_dest, r->mac, 6);
	__builtin_memcpy(eth->h_source, r->gw, 6);
	return bpf_redirect_peer(r->ifindex, 0);
}

#endif
char _license[] SEC("license") = "GPL";

// SPDX-License-Identifier: MIT OR Apache-2.0
//
// The XDP ceiling of benches/compare.sh TOPOLOGY=veth: the least an XDP program must do to
// relay ChannelData over IPv4 for turnd-load's channel workload, with one map entry and no
// other lookup. turnd-load's minimal relay answers the control plane (Allocate, ChannelBind)
// on the stack; this program then turns the data around:
//
//   client -> peer: ChannelData to the listen port loses its header and goes to the first
//     peer (the load host, the entry's peer port), from the client's own port number.
//   peer -> client: a datagram from a peer port to any other port P goes back to port P of
//     the load host as ChannelData on the entry's channel, from the listen port.
//
// No checksum verification, no deadline, no route lookup (the MACs are swapped), no
// counters: what turnd's program adds over this is what its checks cost.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define htons(x) __builtin_bswap16(x)

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_xdp_adjust_head)(struct xdp_md *ctx, int delta) = (void *)BPF_FUNC_xdp_adjust_head;

// Ports and the channel in network byte order; `peers` consecutive peer ports from
// `peer_port` (turnd-load --peers), in host order.
struct config {
    __u16 listen_port;
    __u16 peer_port;
    __u16 channel;
    __u16 peers;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct config);
} ceiling_config SEC(".maps");

static inline __attribute__((always_inline)) __u16 fold(__u32 s) {
    s = (s & 0xffff) + (s >> 16);
    return (__u16)((s & 0xffff) + (s >> 16));
}

SEC("xdp")
int xdp_ceiling(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    struct udphdr *udp = (void *)(ip + 1);
    __u8 *payload = (void *)(udp + 1);
    if ((void *)(payload + 4) > end || eth->h_proto != htons(ETH_P_IP) || ip->ihl != 5 ||
        ip->protocol != IPPROTO_UDP)
        return XDP_PASS;
    __u32 key = 0;
    struct config *c = bpf_map_lookup_elem(&ceiling_config, &key);
    if (!c || !c->peer_port)
        return XDP_PASS;
    __u8 mac[ETH_ALEN];
    __u32 saddr = ip->saddr, daddr = ip->daddr;
    __u16 sport = udp->source, dport = udp->dest, check = udp->check;
    __u16 udp_len = htons(udp->len), tot = htons(ip->tot_len), id = ip->id, frag = ip->frag_off;
    __u8 tos = ip->tos;
    __u32 sum = (__u16)~check;
    if (dport == c->listen_port && (payload[0] & 0xC0) == 0x40) {
        __u16 ch = *(__u16 *)payload, raw_len = *(__u16 *)(payload + 2);
        if (htons(raw_len) + 12 != udp_len)
            return XDP_PASS;
        // Ports: (sport, listen) -> (sport, peer); length -4 twice; header words out.
        sum += (__u16)~dport + c->peer_port;
        sum += (__u16)~htons(udp_len) + htons(udp_len - 4);
        sum += (__u16)~htons(udp_len) + htons(udp_len - 4);
        sum += (__u16)~ch + (__u16)~raw_len;
        __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
        __u8 dst[ETH_ALEN];
        __builtin_memcpy(dst, eth->h_dest, ETH_ALEN);
        if (bpf_xdp_adjust_head(ctx, 4))
            return XDP_PASS;
        data = (void *)(long)ctx->data;
        end = (void *)(long)ctx->data_end;
        eth = data;
        ip = (void *)(eth + 1);
        udp = (void *)(ip + 1);
        if ((void *)(udp + 1) > end)
            return XDP_DROP;
        __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
        __builtin_memcpy(eth->h_source, dst, ETH_ALEN);
        eth->h_proto = htons(ETH_P_IP);
        ip->version = 4;
        ip->ihl = 5;
        ip->tos = tos;
        ip->tot_len = htons(tot - 4);
        ip->id = id;
        ip->frag_off = frag;
        ip->ttl = 64;
        ip->protocol = IPPROTO_UDP;
        ip->saddr = daddr;
        ip->daddr = saddr;
        ip->check = 0;
        __u32 s = 0;
        __u16 *w = (__u16 *)ip;
#pragma unroll
        for (int i = 0; i < 10; i++)
            s += w[i];
        ip->check = ~fold(s);
        udp->source = sport;
        udp->dest = c->peer_port;
        udp->len = htons(udp_len - 4);
        __u16 out = check ? ~fold(sum) : 0;
        udp->check = (check && !out) ? 0xffff : out;
        return XDP_TX;
    }
    if ((__u16)(htons(sport) - htons(c->peer_port)) < c->peers && dport != c->listen_port) {
        // Ports: (peer, P) -> (listen, P); length +4 twice; header words in.
        __u16 raw_len = htons(udp_len - 8);
        sum += (__u16)~sport + c->listen_port;
        sum += (__u16)~htons(udp_len) + htons(udp_len + 4);
        sum += (__u16)~htons(udp_len) + htons(udp_len + 4);
        sum += c->channel + raw_len;
        __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
        __u8 dst[ETH_ALEN];
        __builtin_memcpy(dst, eth->h_dest, ETH_ALEN);
        if (bpf_xdp_adjust_head(ctx, -4))
            return XDP_PASS;
        data = (void *)(long)ctx->data;
        end = (void *)(long)ctx->data_end;
        eth = data;
        ip = (void *)(eth + 1);
        udp = (void *)(ip + 1);
        __u8 *cd = (void *)(udp + 1);
        if ((void *)(cd + 4) > end)
            return XDP_DROP;
        __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
        __builtin_memcpy(eth->h_source, dst, ETH_ALEN);
        eth->h_proto = htons(ETH_P_IP);
        ip->version = 4;
        ip->ihl = 5;
        ip->tos = tos;
        ip->tot_len = htons(tot + 4);
        ip->id = id;
        ip->frag_off = frag;
        ip->ttl = 64;
        ip->protocol = IPPROTO_UDP;
        ip->saddr = daddr;
        ip->daddr = saddr;
        ip->check = 0;
        __u32 s = 0;
        __u16 *w = (__u16 *)ip;
#pragma unroll
        for (int i = 0; i < 10; i++)
            s += w[i];
        ip->check = ~fold(s);
        udp->source = c->listen_port;
        udp->dest = dport;
        udp->len = htons(udp_len + 4);
        __u16 out = check ? ~fold(sum) : 0;
        udp->check = (check && !out) ? 0xffff : out;
        *(__u16 *)cd = c->channel;
        *(__u16 *)(cd + 2) = raw_len;
        return XDP_TX;
    }
    return XDP_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";

// SPDX-License-Identifier: MIT OR GPL-2.0-only
// (GPL-compatible because bpf_fib_lookup is a GPL-only helper; the rest of turnd is
// MIT OR Apache-2.0.)
//
// turnd's XDP fast path: relays TURN ChannelData over UDP in both directions for the channels
// turnd's engine has installed, and hands every other packet to the stack unchanged.
//
//   client -> peer: a ChannelData datagram to a listener whose (client, listener, channel) has
//     an entry: the 4-byte header (and up to 3 bytes of padding) go, the addresses become
//     (relay -> peer), and the frame goes back out of the interface it came in on.
//   peer -> client: a datagram to a relay port whose (peer, relay) has an entry: a 4-byte
//     header is put in front and the addresses become (listener -> client).
//
// Anything else is XDP_PASS: STUN, Send and Data indications, no entry, an entry past its
// deadline, a lying length, IP options, fragments, IPv6 extension headers, VLAN tags, a next
// hop on another interface or with no neighbour entry, a frame that would not fit the MTU.
// turnd then handles the packet exactly as it would without this program.
//
// Built with clang -target bpf by build.rs; it needs only the kernel's UAPI headers.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#define SEC(name) __attribute__((section(name), used))
#define INLINE static __attribute__((always_inline)) inline
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_xdp_adjust_head)(struct xdp_md *ctx, int delta) = (void *)BPF_FUNC_xdp_adjust_head;
static long (*bpf_xdp_adjust_tail)(struct xdp_md *ctx, int delta) = (void *)BPF_FUNC_xdp_adjust_tail;
static __s64 (*bpf_csum_diff)(__be32 *from, __u32 from_size, __be32 *to, __u32 to_size,
                              __u32 seed) = (void *)BPF_FUNC_csum_diff;
// The clock at the last tick: a tenth of bpf_ktime_get_ns's cost here. It lags the real
// monotonic clock by at most a tick, so turnd writes each deadline early by more than a tick
// (src/net/xdp.rs), and the program stops before the engine's deadline, never after it.
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;
static long (*bpf_fib_lookup)(void *ctx, struct bpf_fib_lookup *params, int plen,
                              __u32 flags) = (void *)BPF_FUNC_fib_lookup;

// Keeps the compiler from rebuilding a checked packet pointer from an unchecked copy.
#define barrier_var(v) asm volatile("" : "+r"(v))
#define bswap16(x) __builtin_bswap16(x)
#define htons(x) bswap16(x)
#define ntohs(x) bswap16(x)
#define htonl(x) __builtin_bswap32(x)

// Largest ChannelData payload handled here, what fits a 1500-byte MTU; larger ones (jumbo
// frames) go to the stack.
#define MAX_DATA 1500
#define TTL 64
#define IP_DF 0x4000
#define ENTRIES 65536

// Addresses are 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d. Ports and channel numbers are
// in network byte order, as on the wire. Userspace (src/xdp) writes the same layout.
struct client_key {
    __u8 client[16];
    __u8 listener[16];
    __u16 client_port;
    __u16 listener_port;
    __u16 channel;
    __u16 pad;
};

struct peer_key {
    __u8 peer[16];
    __u8 relay[16];
    __u16 peer_port;
    __u16 relay_port;
    __u32 pad;
};

// One direction of an entry: where the packet goes, from where, and until when.
struct route {
    __u8 to[16];
    __u8 from[16];
    __u16 to_port;
    __u16 from_port;
    __u16 channel; // peer -> client: the channel to prepend
    __u16 flags;   // ROUTE_DF: set DF on IPv4 (DONT-FRAGMENT)
    __u64 expires; // CLOCK_MONOTONIC ns, early by more than a tick; from then on, the stack
    __u32 slot;    // index into turnd_counts
    __u32 pad;
};

#define ROUTE_DF 1

struct counts {
    __u64 to_peer_packets;
    __u64 to_peer_bytes;
    __u64 to_client_packets;
    __u64 to_client_bytes;
};

// Program-wide counters, by index (per CPU).
enum {
    STAT_TO_PEER,
    STAT_TO_CLIENT,
    STAT_PASS_EXPIRED,
    STAT_PASS_LENGTH,
    STAT_PASS_ROUTE,
    STAT_PASS_CHECKSUM,
    STAT_MAX,
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, ENTRIES);
    __type(key, struct client_key);
    __type(value, struct route);
} turnd_clients SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, ENTRIES);
    __type(key, struct peer_key);
    __type(value, struct route);
} turnd_peers SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, ENTRIES);
    __type(key, __u32);
    __type(value, struct counts);
} turnd_counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_MAX);
    __type(key, __u32);
    __type(value, __u64);
} turnd_stats SEC(".maps");

INLINE void stat(__u32 i) {
    __u64 *v = bpf_map_lookup_elem(&turnd_stats, &i);
    if (v)
        *v += 1;
}

// One's-complement arithmetic on raw (memory-order) 16-bit words: the Internet checksum does
// not care about byte order as long as every word is taken the same way (RFC 1071).
INLINE __u32 add16(__u32 sum, __u16 v) { return sum + v; }
INLINE __u32 sub16(__u32 sum, __u16 v) { return sum + (__u16)~v; }
INLINE __u16 fold(__u32 sum) {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

// A 16-byte address's words. For IPv4 the ::ffff: prefix of the old and the new address
// cancel, so both families take all eight words.
INLINE __u32 add_addr(__u32 sum, const __u8 *a) {
    const __u16 *w = (const __u16 *)a;
#pragma unroll
    for (int i = 0; i < 8; i++)
        sum = add16(sum, w[i]);
    return sum;
}

INLINE __u32 sub_addr(__u32 sum, const __u8 *a) {
    const __u16 *w = (const __u16 *)a;
#pragma unroll
    for (int i = 0; i < 8; i++)
        sum = sub16(sum, w[i]);
    return sum;
}

// The finished UDP checksum from ~old + changes; 0 stays 0 (an IPv4 datagram without one).
INLINE __u16 udp_check(__u16 old, __u32 sum) {
    if (old == 0)
        return 0;
    __u16 c = ~fold(sum);
    return c ? c : 0xffff;
}

INLINE void copy16(__u8 *dst, const __u8 *src) { __builtin_memcpy(dst, src, 16); }

INLINE void mapped4(__u8 *dst, __u32 addr) {
    __u32 *w = (__u32 *)dst;
    w[0] = 0;
    w[1] = 0;
    w[2] = htonl(0xffff);
    w[3] = addr;
}

INLINE __u16 ip4_check(const struct iphdr *ip) {
    const __u16 *w = (const __u16 *)ip;
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < 10; i++)
        sum += w[i];
    return ~fold(sum);
}




// The packet as read before any change.
struct seen {
    int v4;
    __u8 src[16];
    __u8 dst[16];
    __u16 sport; // network order
    __u16 dport;
    __u16 udp_len; // host order, header included
    __u16 udp_check;
    __u8 tos;      // IPv4
    __u16 frag;    // IPv4, network order
    __u16 ip_id;   // IPv4
    __u32 v6_head; // IPv6: version, traffic class, flow label
    __u32 l3_off;  // offset of the IP header
    __u32 l4_off;  // offset of the UDP header
};

// The sum of the UDP header and payload, `len` bytes at `l4_off`, plus `acc`, folded: 0xffff
// when the checksum is right. A global function, so that the verifier checks it once and not
// once for every path that reaches it.
__attribute__((noinline)) int turnd_udp_sum(struct xdp_md *ctx, __u32 l4_off, __u32 len, __u32 seed) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    if (l4_off > 64 || len > MAX_DATA + 16)
        return 0;
    __u64 acc = seed;
    // 512 bytes at a time (bpf_csum_diff's limit), then in pieces of 256, 128, ... 4 bytes
    // (constant sizes, which the verifier checks without a loop), then the last 0 to 3 bytes.
    __u32 off = 0;
    for (int i = 0; i < (MAX_DATA + 16) / 512; i++) {
        if (off + 512 > len)
            break;
        __u32 o = l4_off + off;
        barrier_var(o);
        __u8 *q = data + (o & 0x7ff);
        if ((void *)(q + 512) > end)
            return 0;
        __s64 r = bpf_csum_diff(0, 0, (__be32 *)q, 512, 0);
        if (r < 0)
            return 0;
        acc += (__u32)r;
        off += 512;
    }
    __u32 rest = len - off;
    __u32 o = l4_off + off;
    barrier_var(o);
    __u8 *q = data + (o & 0x7ff);
#define PIECE(n)                                                                                  \
    if (rest & (n)) {                                                                             \
        barrier_var(q);                                                                           \
        if ((void *)(q + (n)) > end)                                                              \
            return 0;                                                                             \
        __s64 r = bpf_csum_diff(0, 0, (__be32 *)q, (n), 0);                                       \
        if (r < 0)                                                                                \
            return 0;                                                                             \
        acc += (__u32)r;                                                                          \
        q += (n);                                                                                 \
    }
    PIECE(256)
    PIECE(128)
    PIECE(64)
    PIECE(32)
    PIECE(16)
    PIECE(8)
    PIECE(4)
#undef PIECE
    __u32 tail = rest & 3;
    if (tail > 0) {
        if ((void *)(q + 1) > end)
            return 0;
        acc += q[0];
    }
    if (tail > 1) {
        if ((void *)(q + 2) > end)
            return 0;
        acc += (__u16)q[1] << 8;
    }
    if (tail > 2) {
        if ((void *)(q + 3) > end)
            return 0;
        acc += q[2];
    }
    acc = (acc & 0xffffffff) + (acc >> 32);
    return fold((__u32)acc + (__u32)(acc >> 32));
}

// Whether the datagram's UDP checksum, as received, is complete and right. A sender on this
// very host (over a veth) leaves a partial checksum for offload: rewriting that one
// incrementally would send a wrong datagram. Such a datagram, like a corrupt one, goes to the
// stack, which knows what to do with it. An IPv4 datagram without a checksum (0) is fine.
INLINE int checksum_ok(struct xdp_md *ctx, const struct seen *s) {
    if (s->udp_check == 0)
        return s->v4;
    // The pseudo-header: addresses, protocol, length.
    __u32 acc = 0;
    const __u16 *src = (const __u16 *)s->src;
    const __u16 *dst = (const __u16 *)s->dst;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (!s->v4 || i >= 6) {
            acc += src[i];
            acc += dst[i];
        }
    }
    acc += htons(IPPROTO_UDP);
    acc += htons(s->udp_len);
    return turnd_udp_sum(ctx, s->l4_off, s->udp_len, acc) == 0xffff;
}

// Looks up the next hop for a packet from `from` to `to`, of `ip_len` bytes, leaving by the
// interface it came in on. Returns 0 with the MACs in `fib` when the frame can be sent back out.
INLINE int next_hop(struct xdp_md *ctx, struct bpf_fib_lookup *fib, const struct seen *s,
                    const struct route *r, __u16 ip_len) {
    __builtin_memset(fib, 0, sizeof(*fib));
    fib->ifindex = ctx->ingress_ifindex;
    fib->l4_protocol = IPPROTO_UDP;
    fib->sport = r->from_port;
    fib->dport = r->to_port;
    fib->tot_len = ip_len;
    if (s->v4) {
        fib->family = 2; // AF_INET
        __builtin_memcpy(&fib->ipv4_src, r->from + 12, 4);
        __builtin_memcpy(&fib->ipv4_dst, r->to + 12, 4);
    } else {
        fib->family = 10; // AF_INET6
        __builtin_memcpy(fib->ipv6_src, r->from, 16);
        __builtin_memcpy(fib->ipv6_dst, r->to, 16);
    }
    // OUTPUT: the route of a packet this host sends (a relay originates what it relays). The
    // kernel answers only on an interface with forwarding on (BPF_FIB_LKUP_RET_FWD_DISABLED
    // otherwise), which turnd checks when it attaches.
    long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), BPF_FIB_LOOKUP_OUTPUT);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib->ifindex != ctx->ingress_ifindex) {
        stat(STAT_PASS_ROUTE);
        return -1;
    }
    return 0;
}

// Writes fresh Ethernet, IP and UDP headers at the (moved) start of the frame.
INLINE int write_headers(struct xdp_md *ctx, const struct seen *s, const struct route *r,
                         const struct bpf_fib_lookup *fib, __u16 udp_len, __u16 check) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return -1;
    __builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
    struct udphdr *udp;
    if (s->v4) {
        eth->h_proto = htons(ETH_P_IP);
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return -1;
        ip->version = 4;
        ip->ihl = 5;
        ip->tos = s->tos;
        ip->tot_len = htons(udp_len + sizeof(struct iphdr));
        ip->id = s->ip_id;
        ip->frag_off = (r->flags & ROUTE_DF) ? (s->frag | htons(IP_DF)) : s->frag;
        ip->ttl = TTL;
        ip->protocol = IPPROTO_UDP;
        __builtin_memcpy(&ip->saddr, r->from + 12, 4);
        __builtin_memcpy(&ip->daddr, r->to + 12, 4);
        ip->check = 0;
        ip->check = ip4_check(ip);
        udp = (void *)(ip + 1);
    } else {
        eth->h_proto = htons(ETH_P_IPV6);
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return -1;
        __builtin_memcpy(ip6, &s->v6_head, 4);
        ip6->payload_len = htons(udp_len);
        ip6->nexthdr = IPPROTO_UDP;
        ip6->hop_limit = TTL;
        __builtin_memcpy(&ip6->saddr, r->from, 16);
        __builtin_memcpy(&ip6->daddr, r->to, 16);
        udp = (void *)(ip6 + 1);
    }
    if ((void *)(udp + 1) > end)
        return -1;
    udp->source = r->from_port;
    udp->dest = r->to_port;
    udp->len = htons(udp_len);
    udp->check = check;
    return 0;
}

// Trims the frame to `len` bytes when it is longer (Ethernet padding, ChannelData padding).
INLINE int trim(struct xdp_md *ctx, __u32 len) {
    long have = (long)ctx->data_end - (long)ctx->data;
    if (have > len)
        return bpf_xdp_adjust_tail(ctx, (int)len - (int)have) ? -1 : 0;
    return 0;
}

INLINE void count(__u32 slot, int to_peer, __u64 bytes) {
    struct counts *c = bpf_map_lookup_elem(&turnd_counts, &slot);
    if (!c)
        return;
    if (to_peer) {
        c->to_peer_packets += 1;
        c->to_peer_bytes += bytes;
    } else {
        c->to_client_packets += 1;
        c->to_client_bytes += bytes;
    }
}

// The sum of the changes common to both directions: addresses and ports in the pseudo-header
// and the header, and the UDP length, which the checksum covers twice.
INLINE __u32 rewrite_sum(const struct seen *s, const struct route *r, __u16 new_len) {
    __u32 sum = (__u16)~s->udp_check;
    sum = sub_addr(sum, s->src);
    sum = sub_addr(sum, s->dst);
    sum = add_addr(sum, r->from);
    sum = add_addr(sum, r->to);
    sum = sub16(sum, s->sport);
    sum = sub16(sum, s->dport);
    sum = add16(sum, r->from_port);
    sum = add16(sum, r->to_port);
    sum = sub16(sum, htons(s->udp_len));
    sum = sub16(sum, htons(s->udp_len));
    sum = add16(sum, htons(new_len));
    sum = add16(sum, htons(new_len));
    return sum;
}

// client -> peer: strip the ChannelData header.
INLINE int to_peer(struct xdp_md *ctx, const struct seen *s, const struct route *r,
                   struct bpf_fib_lookup *fib) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u8 *payload = data + s->l4_off + sizeof(struct udphdr);
    if ((void *)(payload + 4) > end)
        return XDP_PASS;
    __u16 channel = *(__u16 *)payload;
    __u16 raw_len = *(__u16 *)(payload + 2);
    __u32 len = ntohs(raw_len);
    __u32 have = s->udp_len - sizeof(struct udphdr) - 4;
    // A lying length, or more than padding after the data: the stack decides.
    if (len > MAX_DATA || len > have || have - len > 3) {
        stat(STAT_PASS_LENGTH);
        return XDP_PASS;
    }
    __u16 new_len = sizeof(struct udphdr) + len;
    __u32 sum = rewrite_sum(s, r, new_len);
    sum = sub16(sum, channel);
    sum = sub16(sum, raw_len);
    // Padding bytes leave the checksum too, each in its place within its 16-bit word
    // (offsets from the UDP header, whose start is word-aligned for the checksum).
    __u32 pad = have - len;
#pragma unroll
    for (__u32 i = 0; i < 3; i++) {
        if (i < pad) {
            __u8 *p = payload + 4 + len + i;
            if ((void *)(p + 1) > end)
                return XDP_PASS;
            __u32 off = sizeof(struct udphdr) + 4 + len + i;
            __u16 word = (off & 1) ? ((__u16)*p << 8) : *p;
            sum = sub16(sum, word);
        }
    }
    __u16 check = udp_check(s->udp_check, sum);
    __u16 ip_len = new_len + (s->v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr));
    if (next_hop(ctx, fib, s, r, ip_len))
        return XDP_PASS;
    if (bpf_xdp_adjust_head(ctx, 4))
        return XDP_PASS;
    if (trim(ctx, s->l4_off + new_len))
        return XDP_DROP;
    if (write_headers(ctx, s, r, fib, new_len, check))
        return XDP_DROP;
    count(r->slot, 1, len);
    stat(STAT_TO_PEER);
    return XDP_TX;
}

// peer -> client: put a ChannelData header in front.
INLINE int to_client(struct xdp_md *ctx, const struct seen *s, const struct route *r,
                     struct bpf_fib_lookup *fib) {
    __u32 len = s->udp_len - sizeof(struct udphdr);
    if (len > MAX_DATA) {
        stat(STAT_PASS_LENGTH);
        return XDP_PASS;
    }
    __u16 new_len = s->udp_len + 4;
    __u16 raw_len = htons(len);
    __u32 sum = rewrite_sum(s, r, new_len);
    sum = add16(sum, r->channel);
    sum = add16(sum, raw_len);
    __u16 check = udp_check(s->udp_check, sum);
    __u16 ip_len = new_len + (s->v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr));
    if (next_hop(ctx, fib, s, r, ip_len))
        return XDP_PASS;
    if (bpf_xdp_adjust_head(ctx, -4))
        return XDP_PASS;
    if (trim(ctx, s->l4_off + new_len))
        return XDP_DROP;
    if (write_headers(ctx, s, r, fib, new_len, check))
        return XDP_DROP;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u8 *cd = data + s->l4_off + sizeof(struct udphdr);
    if ((void *)(cd + 4) > end)
        return XDP_DROP;
    *(__u16 *)cd = r->channel;
    *(__u16 *)(cd + 2) = raw_len;
    count(r->slot, 0, len);
    stat(STAT_TO_CLIENT);
    return XDP_TX;
}

INLINE int relay(struct xdp_md *ctx, struct seen *s, struct bpf_fib_lookup *fib) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct udphdr *udp = data + s->l4_off;
    if ((void *)(udp + 1) > end)
        return XDP_PASS;
    s->sport = udp->source;
    s->dport = udp->dest;
    s->udp_check = udp->check;
    // The UDP length must be what the IP header said (checked by the caller) and present.
    if (s->udp_len < sizeof(struct udphdr) || (void *)udp + s->udp_len > end)
        return XDP_PASS;

    // ChannelData from a client to a listener (looked up first when the datagram has the
    // shape, so a client's packet costs one lookup), or a datagram from a peer to a relay
    // port.
    __u8 *payload = (void *)(udp + 1);
    int to_peer_dir = 0;
    struct route *r = 0;
    if ((void *)(payload + 4) <= end && (payload[0] & 0xC0) == 0x40) {
        struct client_key ck = {};
        copy16(ck.client, s->src);
        copy16(ck.listener, s->dst);
        ck.client_port = s->sport;
        ck.listener_port = s->dport;
        ck.channel = *(__u16 *)payload;
        r = bpf_map_lookup_elem(&turnd_clients, &ck);
        to_peer_dir = r != 0;
    }
    if (!r) {
        struct peer_key pk = {};
        copy16(pk.peer, s->src);
        copy16(pk.relay, s->dst);
        pk.peer_port = s->sport;
        pk.relay_port = s->dport;
        r = bpf_map_lookup_elem(&turnd_peers, &pk);
        if (!r)
            return XDP_PASS;
    }
    if (bpf_ktime_get_coarse_ns() >= r->expires) {
        stat(STAT_PASS_EXPIRED);
        return XDP_PASS;
    }
    if (!checksum_ok(ctx, s)) {
        stat(STAT_PASS_CHECKSUM);
        return XDP_PASS;
    }
    return to_peer_dir ? to_peer(ctx, s, r, fib) : to_client(ctx, s, r, fib);
}

SEC("xdp")
int turnd_xdp(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    struct seen s = {};
    s.l3_off = sizeof(struct ethhdr);
    if (eth->h_proto == htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return XDP_PASS;
        // No options, no fragments, UDP.
        if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & htons(0x3fff)))
            return XDP_PASS;
        __u16 tot = ntohs(ip->tot_len);
        if (tot < sizeof(struct iphdr))
            return XDP_PASS;
        s.v4 = 1;
        mapped4(s.src, ip->saddr);
        mapped4(s.dst, ip->daddr);
        s.tos = ip->tos;
        s.frag = ip->frag_off;
        s.ip_id = ip->id;
        s.l4_off = s.l3_off + sizeof(struct iphdr);
        s.udp_len = tot - sizeof(struct iphdr);
        struct udphdr *udp = (void *)(ip + 1);
        if ((void *)(udp + 1) > end || ntohs(udp->len) != s.udp_len)
            return XDP_PASS;
    } else if (eth->h_proto == htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return XDP_PASS;
        // No extension headers: UDP right after the fixed header.
        if (ip6->nexthdr != IPPROTO_UDP)
            return XDP_PASS;
        // Link-local and multicast stay with the stack.
        if (ip6->daddr.in6_u.u6_addr8[0] == 0xff || ip6->saddr.in6_u.u6_addr8[0] == 0xfe)
            return XDP_PASS;
        s.v4 = 0;
        copy16(s.src, ip6->saddr.in6_u.u6_addr8);
        copy16(s.dst, ip6->daddr.in6_u.u6_addr8);
        __builtin_memcpy(&s.v6_head, ip6, 4);
        s.l4_off = s.l3_off + sizeof(struct ipv6hdr);
        s.udp_len = ntohs(ip6->payload_len);
        struct udphdr *udp = (void *)(ip6 + 1);
        // An IPv6 UDP checksum is never 0 (RFC 8200): such a datagram is the stack's.
        if ((void *)(udp + 1) > end || ntohs(udp->len) != s.udp_len || udp->check == 0)
            return XDP_PASS;
    } else {
        return XDP_PASS;
    }
    struct bpf_fib_lookup fib;
    return relay(ctx, &s, &fib);
}

char _license[] SEC("license") = "Dual MIT/GPL";

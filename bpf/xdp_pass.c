// SPDX-License-Identifier: MIT OR Apache-2.0
//
// XDP_PASS for everything. The load generator's end of a veth carries it in the XDP tests and
// in benches/compare.sh TOPOLOGY=veth: a veth drops frames sent to it with XDP_TX unless its
// peer has an XDP program too. Every server is measured with it attached, so all alike.
#include <linux/bpf.h>

__attribute__((section("xdp"), used)) int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }

char _license[] __attribute__((section("license"), used)) = "Dual MIT/GPL";

//! Which peers a client may relay to. Special-purpose addresses (loopback, unspecified,
//! private, link-local, multicast, broadcast, documentation, and the rest of the IANA
//! special-purpose registries) are refused unless `peers.allow` lists them. IPv4 addresses
//! carried inside IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged as the IPv4
//! address they carry, which closes the `::ffff:127.0.0.1` class of bypass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// IPv4 ranges refused by default (RFC 6890 and its successors).
const DENY_V4: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network", includes 0.0.0.0
    (0x0A00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 shared address space (CGNAT)
    (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
    (0xA9FE_0000, 16), // 169.254.0.0/16 link-local
    (0xAC10_0000, 12), // 172.16.0.0/12 private
    (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
    (0xC000_0200, 24), // 192.0.2.0/24 documentation
    (0xC058_6300, 24), // 192.88.99.0/24 6to4 relay anycast (deprecated)
    (0xC0A8_0000, 16), // 192.168.0.0/16 private
    (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xC633_6400, 24), // 198.51.100.0/24 documentation
    (0xCB00_7100, 24), // 203.0.113.0/24 documentation
    (0xE000_0000, 4),  // 224.0.0.0/4 multicast
    (0xF000_0000, 4),  // 240.0.0.0/4 reserved, includes 255.255.255.255 broadcast
];

/// IPv6 ranges refused by default (after embedded IPv4 has been extracted).
const DENY_V6: &[(u128, u8)] = &[
    (0, 128),                          // :: unspecified
    (1, 128),                          // ::1 loopback
    (0x0100_0000_0000_0000 << 64, 64), // 100::/64 discard-only
    (0x2001_0000u128 << 96, 23),       // 2001::/23 IETF protocol assignments (Teredo, ORCHID...)
    (0x2001_0db8u128 << 96, 32),       // 2001:db8::/32 documentation
    (0x3fff_0000u128 << 96, 20),       // 3fff::/20 documentation
    (0xfc00u128 << 112, 7),            // fc00::/7 unique local
    (0xfe80u128 << 112, 10),           // fe80::/10 link-local
    (0xfec0u128 << 112, 10),           // fec0::/10 site-local (deprecated)
    (0xff00u128 << 112, 8),            // ff00::/8 multicast
    (0x0064_ff9b_0001u128 << 80, 48),  // 64:ff9b:1::/48 local-use NAT64
];

/// The peer policy: the built-in deny list with `peers.allow` exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
}

/// The address a peer really is: IPv4 inside IPv6 becomes IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let s = v6.segments();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4); // ::ffff:a.b.c.d
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(tail); // ::a.b.c.d (deprecated IPv4-compatible)
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail); // 64:ff9b::/96 NAT64
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])); // 2002::/16 6to4
    }
    None
}

fn denied_by_default(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let x = u32::from(v4);
            DENY_V4.iter().any(|&(net, len)| x >> (32 - len) == net >> (32 - len))
        }
        IpAddr::V6(v6) => {
            let x = u128::from(v6);
            DENY_V6.iter().any(|&(net, len)| x >> (128 - len) == net >> (128 - len))
        }
    }
}

impl PeerPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        PeerPolicy { allow }
    }

    /// True when a client may install a permission or channel for `peer`.
    pub fn permits(&self, peer: IpAddr) -> bool {
        let ip = canonical(peer);
        if !denied_by_default(ip) {
            return true;
        }
        self.allow.iter().any(|net| match (net, ip) {
            (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
            (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(allow: &[&str]) -> PeerPolicy {
        PeerPolicy::new(allow.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn special_purpose_addresses_are_denied() {
        let policy = p(&[]);
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2001::1",
            "100::1",
            "64:ff9b:1::1",
        ] {
            assert!(!policy.permits(ip.parse().unwrap()), "{ip} must be denied");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let policy = p(&[]);
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(policy.permits(ip.parse().unwrap()), "{ip} must be allowed");
        }
    }

    #[test]
    fn allow_list_exempts_after_canonicalisation() {
        let policy = p(&["127.0.0.0/8", "::1/128"]);
        assert!(policy.permits("127.0.0.1".parse().unwrap()));
        assert!(policy.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(policy.permits("::1".parse().unwrap()));
        assert!(!policy.permits("10.0.0.1".parse().unwrap()));
        assert!(!policy.permits("::ffff:10.0.0.1".parse().unwrap()));
    }
}

//! The PROXY protocol header (HAProxy's spec, versions 1 and 2): what a load balancer in
//! front of a TCP or TLS listener sends first, naming the client it accepted. Sans-IO: the
//! driver peeks at the first bytes of a connection and asks [`parse`] how many belong to the
//! header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// The longest v1 line, CRLF included (the spec's bound).
const V1_MAX: usize = 107;
/// The longest v2 header accepted: the addresses and a few TLVs. A load balancer sending
/// more is misconfigured.
pub const V2_MAX: usize = 16 + 512;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection's own addresses are the real ones (v2 LOCAL, a health check; v1
    /// UNKNOWN; or a family other than TCP over IPv4 or IPv6).
    Local,
    /// The client the load balancer accepted, and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// The header, and how many bytes it took.
    Done(Header, usize),
    /// Not a PROXY header: the connection must be closed.
    Invalid(&'static str),
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..n) == V2_SIGNATURE.get(..n) {
        if buf.len() < 16 {
            return Parsed::Incomplete;
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(6);
    if buf.get(..n) == b"PROXY ".get(..n) {
        if buf.len() < 6 {
            return Parsed::Incomplete;
        }
        return parse_v1(buf);
    }
    Parsed::Invalid("no PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = buf.get(..buf.len().min(V1_MAX)).unwrap_or(buf);
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 line longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let Some(line) = window.get(..end).and_then(|l| std::str::from_utf8(l).ok()) else {
        return Parsed::Invalid("PROXY v1 line is not text");
    };
    let len = end + 2;
    let mut words = line.split(' ');
    let (_, family) = (words.next(), words.next());
    match family {
        Some("UNKNOWN") => return Parsed::Done(Header::Local, len),
        Some("TCP4") | Some("TCP6") => {}
        _ => return Parsed::Invalid("PROXY v1: family must be TCP4, TCP6 or UNKNOWN"),
    }
    let v4 = family == Some("TCP4");
    let fields: Vec<&str> = words.collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Parsed::Invalid("PROXY v1: expected source, destination and two ports");
    };
    let ip = |s: &str| -> Option<IpAddr> {
        let ip: IpAddr = s.parse().ok()?;
        (ip.is_ipv4() == v4).then_some(ip)
    };
    // Ports are decimal with no leading zero (the spec), 0 to 65535.
    let port = |s: &str| -> Option<u16> {
        if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (ip(src), ip(dst), port(sport), port(dport)) {
        (Some(s), Some(d), Some(sp), Some(dp)) => Parsed::Done(
            Header::Proxied {
                source: SocketAddr::new(s, sp),
                destination: SocketAddr::new(d, dp),
            },
            len,
        ),
        _ => Parsed::Invalid("PROXY v1: bad address or port"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let (Some(&ver_cmd), Some(&family), Some(len)) = (
        buf.get(12),
        buf.get(13),
        buf.get(14..16).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))),
    ) else {
        return Parsed::Incomplete;
    };
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("PROXY v2: unknown version");
    }
    let total = 16 + len;
    if total > V2_MAX {
        return Parsed::Invalid("PROXY v2 header longer than 528 bytes");
    }
    let Some(body) = buf.get(16..total) else {
        return Parsed::Incomplete;
    };
    match ver_cmd & 0x0F {
        // LOCAL: the load balancer's own connection (a health check).
        0 => return Parsed::Done(Header::Local, total),
        1 => {}
        _ => return Parsed::Invalid("PROXY v2: unknown command"),
    }
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    let header = match family {
        // TCP over IPv4: 4 + 4 + 2 + 2 bytes.
        0x11 => {
            let (Some(s), Some(d), Some(sp), Some(dp)) = (
                body.get(0..4).and_then(|b| <[u8; 4]>::try_from(b).ok()),
                body.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()),
                be16(body, 8),
                be16(body, 10),
            ) else {
                return Parsed::Invalid("PROXY v2: IPv4 addresses cut short");
            };
            Header::Proxied {
                source: SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                destination: SocketAddr::new(Ipv4Addr::from(d).into(), dp),
            }
        }
        // TCP over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 => {
            let (Some(s), Some(d), Some(sp), Some(dp)) = (
                body.get(0..16).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                body.get(16..32).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                be16(body, 32),
                be16(body, 34),
            ) else {
                return Parsed::Invalid("PROXY v2: IPv6 addresses cut short");
            };
            Header::Proxied {
                source: SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                destination: SocketAddr::new(Ipv6Addr::from(d).into(), dp),
            }
        }
        // UNSPEC, UDP or Unix sockets: keep the connection's own addresses.
        _ => Header::Local,
    };
    Parsed::Done(header, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxied(s: &str, d: &str) -> Header {
        Header::Proxied {
            source: s.parse().unwrap(),
            destination: d.parse().unwrap(),
        }
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 198.18.0.1 198.18.0.2 56324 3478\r\nrest";
        assert_eq!(
            parse(line),
            Parsed::Done(proxied("198.18.0.1:56324", "198.18.0.2:3478"), 45)
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        assert_eq!(
            parse(line),
            Parsed::Done(proxied("[2001:db8::1]:1", "[2001:db8::2]:65535"), line.len())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Done(Header::Local, 15));
        assert_eq!(parse(b"PROXY TCP4 198.18.0.1"), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        for bad in [
            &b"PROXY TCP4 198.18.0.1 198.18.0.2 56324 65536\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.18.0.2 1 2\r\n",
            b"PROXY TCP4 198.18.0.1 198.18.0.2 01 2\r\n",
            b"PROXY TCP5 198.18.0.1 198.18.0.2 1 2\r\n",
            b"PROXY TCP4 198.18.0.1 198.18.0.2 1\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(20)),
            Parsed::Invalid(_)
        ));
    }

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([0x20 | cmd, family]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    #[test]
    fn v2_headers() {
        let mut body = vec![198, 18, 0, 1, 198, 18, 0, 2];
        body.extend(56324u16.to_be_bytes());
        body.extend(3478u16.to_be_bytes());
        // A TLV after the addresses is skipped.
        body.extend([0x04, 0x00, 0x01, 0xAA]);
        let h = v2(1, 0x11, &body);
        assert_eq!(
            parse(&h),
            Parsed::Done(proxied("198.18.0.1:56324", "198.18.0.2:3478"), h.len())
        );
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        let mut body6 = vec![0u8; 32];
        body6[15] = 1;
        body6[31] = 2;
        body6.extend([0, 7, 0, 9]);
        let h = v2(1, 0x21, &body6);
        assert_eq!(parse(&h), Parsed::Done(proxied("[::1]:7", "[::2]:9"), h.len()));
        assert_eq!(parse(&v2(0, 0x00, &[])), Parsed::Done(Header::Local, 16));
        assert_eq!(parse(&v2(1, 0x12, &body)), Parsed::Done(Header::Local, 16 + body.len()));
        assert!(matches!(parse(&v2(1, 0x11, &[1, 2, 3])), Parsed::Invalid(_)));
        assert!(matches!(parse(&v2(2, 0x11, &body)), Parsed::Invalid(_)));
        let mut wrong_version = v2(1, 0x11, &body);
        wrong_version[12] = 0x31;
        assert!(matches!(parse(&wrong_version), Parsed::Invalid(_)));
        assert!(matches!(parse(&v2(1, 0x11, &[0; 600])), Parsed::Invalid(_)));
    }
}

//! NAT behaviour discovery (RFC 5780) for a Binding request that reaches one of the four
//! discovery addresses: every answer carries RESPONSE-ORIGIN and OTHER-ADDRESS;
//! CHANGE-REQUEST is answered from the address it asks for, RESPONSE-PORT to another port of
//! the requester's own IP (never another IP), and PADDING with no more padding than the
//! request carried and no more bytes than the request had.

use std::net::SocketAddr;

use super::stats::DiscoveryKind;
use super::{AddressQuad, Engine, FiveTuple, Output, RelayIo};
use crate::proto::{AttrType, Change, Class, DiscoveryAttributes, ErrorCode, Field, Message, MessageType, Method};

/// The RFC 5780 request attributes, known in a Binding request to a discovery address.
pub(super) const RFC5780: [AttrType; 3] = [AttrType::CHANGE_REQUEST, AttrType::RESPONSE_PORT, AttrType::PADDING];

/// Why a discovery request is answered 400.
fn check(attrs: &DiscoveryAttributes, stream: bool) -> Result<(Change, Option<u16>, Option<usize>), ()> {
    let change = match attrs.change {
        Field::Absent => Change::default(),
        Field::Malformed => return Err(()),
        Field::Present(c) => c,
    };
    let response_port = match attrs.response_port {
        Field::Absent => None,
        Field::Present(p) if p != 0 => Some(p),
        _ => return Err(()),
    };
    let padding = attrs.padding.ok();
    // Over TCP the answer can only go back on the connection (RFC 5780 §7.2, §7.5), and
    // PADDING tests UDP fragmentation. RESPONSE-PORT with PADDING would aim a request's
    // worth of bytes at a port that did not ask (§6.1).
    let moves = change.ip || change.port || response_port.is_some();
    if (stream && (moves || padding.is_some())) || (padding.is_some() && response_port.is_some()) {
        return Err(());
    }
    Ok((change, response_port, padding))
}

impl<R: RelayIo> Engine<R> {
    /// The discovery addresses `local` belongs to, when `[nat_discovery]` covers it.
    pub(super) fn discovery_at(&self, local: SocketAddr) -> Option<AddressQuad> {
        self.config
            .discovery
            .iter()
            .find(|q| q.locate(local).is_some())
            .copied()
    }

    #[inline(never)]
    pub(super) fn discovery_binding<'x>(
        &mut self,
        msg: &Message<'_>,
        tuple: &FiveTuple,
        quad: AddressQuad,
        out: &mut [u8],
    ) -> Output<'x, R::Socket> {
        let Some((ip, port)) = quad.locate(tuple.server) else {
            return self.binding(msg, tuple, out);
        };
        let attrs = DiscoveryAttributes::decode(msg);
        let Ok((change, response_port, padding)) = check(&attrs, tuple.transport.is_stream()) else {
            return self.error(msg, tuple, ErrorCode::BAD_REQUEST, &[], out);
        };
        let kind = match (change.ip, change.port) {
            (true, true) => Some(DiscoveryKind::change_both),
            (true, false) => Some(DiscoveryKind::change_ip),
            (false, true) => Some(DiscoveryKind::change_port),
            (false, false) => None,
        };
        let kinds = [
            kind,
            response_port.map(|_| DiscoveryKind::response_port),
            padding.map(|_| DiscoveryKind::padding),
        ];
        for k in kinds.into_iter().flatten() {
            self.stats.discovery[k as usize].inc();
        }

        let from = quad.at(ip ^ usize::from(change.ip), port ^ usize::from(change.port));
        let other = quad.at(ip ^ 1, port ^ 1);
        let to = SocketAddr::new(tuple.client.ip(), response_port.unwrap_or(tuple.client.port()));
        // What follows the body: SOFTWARE and FINGERPRINT, as `respond` adds them.
        let trailer = self
            .config
            .software
            .as_ref()
            .map_or(0, |s| 4 + crate::proto::pad4(s.len()))
            + if msg.has_fingerprint() { 8 } else { 0 };
        let request_len = msg.as_bytes().len();
        let capacity = out.len();
        let typ = MessageType::new(Method::BINDING, Class::Success);
        let len = self.respond(msg, typ, out, None, |w| {
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, tuple.client)?;
            w.plain_address(AttrType::RESPONSE_ORIGIN, from)?;
            w.plain_address(AttrType::OTHER_ADDRESS, other)?;
            if let Some(asked) = padding {
                // No more padding than the request carried, and the whole answer no longer
                // than the request (or than the buffer), in whole words.
                let used = w.len() + 4 + trailer;
                let room = request_len.min(capacity).saturating_sub(used);
                w.attr(AttrType::PADDING, &PADS[..asked.min(room).min(PADS.len()) & !3])?;
            }
            Ok(())
        });
        let Some(len) = len else { return Output::None };
        self.stats.binding_request(tuple.transport);
        Output::ToClient {
            tuple: FiveTuple {
                transport: tuple.transport,
                client: to,
                server: from,
            },
            len,
        }
    }
}

/// PADDING's value: zeros, as much as a UDP datagram can carry.
static PADS: [u8; 65_504] = [0; 65_504];

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::auth::NonceKey;
    use crate::proto::attr::{decode_address, decode_xor_address};
    use crate::proto::{MessageWriter, TransactionId};
    use crate::server::memory::MemoryRelay;
    use crate::server::{EngineConfig, Epoch, Shared, Transport};

    fn quad(a: &str, b: &str, p: u16, q: u16) -> AddressQuad {
        AddressQuad {
            ips: [a.parse().unwrap(), b.parse().unwrap()],
            ports: [p, q],
        }
    }

    fn engine(discovery: Vec<AddressQuad>, rate: u32) -> Engine<MemoryRelay> {
        let config = EngineConfig {
            discovery,
            unauthenticated_rate: rate,
            ..EngineConfig::default()
        };
        let now = Instant::now();
        let shared = Arc::new(Shared::stun_only(NonceKey::from_bytes([1; 32])));
        let epoch = Epoch {
            at: now,
            unix: Duration::from_secs(1_800_000_000),
        };
        Engine::new(Arc::new(config), shared, MemoryRelay::default(), epoch, [3; 32])
    }

    fn binding(body: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let typ = MessageType::new(Method::BINDING, Class::Request);
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([5; 12])).unwrap();
        body(&mut w);
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn udp(client: &str, server: &str) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
        }
    }

    /// What the client sees: where the answer went, from where, and its attributes.
    #[derive(Debug)]
    struct Seen {
        to: SocketAddr,
        from: SocketAddr,
        code: Option<u16>,
        mapped: Option<SocketAddr>,
        origin: Option<SocketAddr>,
        other: Option<SocketAddr>,
        padding: Option<usize>,
        len: usize,
    }

    fn ask(e: &mut Engine<MemoryRelay>, t: &FiveTuple, req: &[u8]) -> Option<Seen> {
        let mut out = vec![0u8; 2048];
        let (tuple, len) = match e.handle_client(Instant::now(), t, req, &mut out) {
            Output::ToClient { tuple, len } => (tuple, len),
            _ => return None,
        };
        let m = Message::parse(&out[..len]).unwrap();
        let tid = m.transaction_id();
        let get = |a: AttrType| m.get(a).map(|a| a.value);
        Some(Seen {
            to: tuple.client,
            from: tuple.server,
            code: (m.class() == Class::Error).then(|| {
                let v = get(AttrType::ERROR_CODE).unwrap();
                u16::from(v[2]) * 100 + u16::from(v[3])
            }),
            mapped: get(AttrType::XOR_MAPPED_ADDRESS).map(|v| decode_xor_address(v, &tid).unwrap()),
            origin: get(AttrType::RESPONSE_ORIGIN).map(|v| decode_address(v).unwrap()),
            other: get(AttrType::OTHER_ADDRESS).map(|v| decode_address(v).unwrap()),
            padding: get(AttrType::PADDING).map(<[u8]>::len),
            len,
        })
    }

    fn change(ip: bool, port: bool) -> Vec<u8> {
        binding(|w| {
            let flags = if ip { 4 } else { 0 } | if port { 2 } else { 0 };
            w.attr(AttrType::CHANGE_REQUEST, &[0, 0, 0, flags]).unwrap();
        })
    }

    #[test]
    fn every_answer_names_its_origin_and_the_other_address_and_comes_from_where_it_is_asked() {
        for q in [
            quad("198.18.0.1", "198.18.0.2", 3478, 3479),
            quad("2001:db8::1", "2001:db8::2", 3478, 3479),
        ] {
            let mut e = engine(vec![q], 0);
            let client: SocketAddr = if q.ips[0].is_ipv4() {
                "198.18.9.9:5000"
            } else {
                "[2001:db8::9]:5000"
            }
            .parse()
            .unwrap();
            // Asked at each of the four addresses, with each of the four CHANGE-REQUESTs.
            for (ip, port) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let t = FiveTuple {
                    transport: Transport::Udp,
                    client,
                    server: q.at(ip, port),
                };
                for (ci, cp) in [(false, false), (true, false), (false, true), (true, true)] {
                    let s = ask(&mut e, &t, &change(ci, cp)).expect("answered");
                    let from = q.at(ip ^ usize::from(ci), port ^ usize::from(cp));
                    assert_eq!(s.code, None);
                    assert_eq!(s.from, from, "leaves from the address asked for");
                    assert_eq!(s.origin, Some(from), "RESPONSE-ORIGIN says so");
                    assert_eq!(s.other, Some(q.at(ip ^ 1, port ^ 1)), "OTHER-ADDRESS differs in both");
                    assert_eq!((s.to, s.mapped), (client, Some(client)));
                }
            }
            // The amplification floor: a bare 20-byte request gets 56 bytes (IPv4), 92 (IPv6).
            let t = FiveTuple {
                transport: Transport::Udp,
                client,
                server: q.at(0, 0),
            };
            let bare = ask(&mut e, &t, &binding(|_| {})).unwrap();
            assert_eq!(bare.len, if q.ips[0].is_ipv4() { 56 } else { 92 });
            let counted = |k: DiscoveryKind| e.stats().discovery[k as usize].get();
            assert_eq!(counted(DiscoveryKind::change_ip), 4);
            assert_eq!(counted(DiscoveryKind::change_port), 4);
            assert_eq!(counted(DiscoveryKind::change_both), 4);
        }
    }

    #[test]
    fn response_port_changes_only_the_port_of_the_requesters_own_ip() {
        let q = quad("198.18.0.1", "198.18.0.2", 3478, 3479);
        let mut e = engine(vec![q], 0);
        let t = udp("198.18.9.9:5000", "198.18.0.1:3478");
        let req = binding(|w| {
            w.attr(AttrType::RESPONSE_PORT, &[0x1F, 0x90, 0, 0]).unwrap();
            w.attr(AttrType::CHANGE_REQUEST, &[0, 0, 0, 4]).unwrap();
        });
        let s = ask(&mut e, &t, &req).unwrap();
        assert_eq!(s.to, "198.18.9.9:8080".parse().unwrap());
        assert_eq!(
            s.mapped,
            Some(t.client),
            "the mapped address is still the request's source"
        );
        assert_eq!(s.from, "198.18.0.2:3478".parse().unwrap());
        assert_eq!(e.stats().discovery[DiscoveryKind::response_port as usize].get(), 1);
        // Port 0 is nowhere to send to.
        let zero = binding(|w| w.attr(AttrType::RESPONSE_PORT, &[0, 0, 0, 0]).unwrap());
        let s = ask(&mut e, &t, &zero).unwrap();
        assert_eq!((s.code, s.to), (Some(400), t.client));
    }

    #[test]
    fn padding_is_never_more_than_the_request_paid_for() {
        let q = quad("198.18.0.1", "198.18.0.2", 3478, 3479);
        let mut e = engine(vec![q], 0);
        let t = udp("198.18.9.9:5000", "198.18.0.1:3478");
        for asked in [0usize, 4, 64, 500, 1400, 3000] {
            let req = binding(|w| {
                w.attr(AttrType::PADDING, &vec![0; asked]).unwrap();
                w.fingerprint().unwrap();
            });
            let s = ask(&mut e, &t, &req).unwrap();
            let padding = s.padding.expect("PADDING answered with PADDING");
            assert!(padding <= asked, "{padding} of {asked}");
            assert!(padding.is_multiple_of(4));
            // With an empty PADDING the answer is 68 bytes (with FINGERPRINT); else no longer
            // than the request, or the 2048-byte buffer.
            assert!(
                s.len <= req.len().clamp(68, 2048),
                "{} for a {}-byte request",
                s.len,
                req.len()
            );
            if (200..=2000).contains(&req.len()) {
                assert!(
                    s.len + 4 > req.len(),
                    "a padded answer is as large as the request allows"
                );
            }
        }
        assert_eq!(e.stats().discovery[DiscoveryKind::padding as usize].get(), 6);
    }

    #[test]
    fn bad_combinations_get_400_and_stream_transports_cannot_move_the_answer() {
        let q = quad("198.18.0.1", "198.18.0.2", 3478, 3479);
        let mut e = engine(vec![q], 0);
        let t = udp("198.18.9.9:5000", "198.18.0.1:3478");
        let both = binding(|w| {
            w.attr(AttrType::PADDING, &[0; 64]).unwrap();
            w.attr(AttrType::RESPONSE_PORT, &[0x1F, 0x90, 0, 0]).unwrap();
        });
        let short = binding(|w| w.attr(AttrType::CHANGE_REQUEST, &[0, 4]).unwrap());
        for req in [both, short] {
            let s = ask(&mut e, &t, &req).unwrap();
            assert_eq!((s.code, s.to, s.from), (Some(400), t.client, t.server));
        }
        let tcp = FiveTuple {
            transport: Transport::Tcp,
            ..t
        };
        let s = ask(&mut e, &tcp, &change(true, false)).unwrap();
        assert_eq!(s.code, Some(400));
        // A plain Binding over TCP still says where the other address is.
        let s = ask(&mut e, &tcp, &binding(|_| {})).unwrap();
        assert_eq!((s.code, s.origin, s.other), (None, Some(t.server), Some(q.at(1, 1))));
    }

    #[test]
    fn off_or_elsewhere_rfc5780_attributes_are_unknown() {
        let q = quad("198.18.0.1", "198.18.0.2", 3478, 3479);
        for (mut e, server) in [
            (engine(vec![], 0), "198.18.0.1:3478"),
            // On, but the request reached an address outside the four.
            (engine(vec![q], 0), "198.18.0.1:5349"),
        ] {
            let t = udp("198.18.9.9:5000", server);
            let s = ask(&mut e, &t, &change(false, true)).unwrap();
            assert_eq!(s.code, Some(420));
            let s = ask(&mut e, &t, &binding(|_| {})).unwrap();
            assert_eq!(
                (s.code, s.origin, s.other),
                (None, None, None),
                "plain Binding as before"
            );
        }
    }

    #[test]
    fn the_per_source_limit_counts_answers_sent_elsewhere() {
        let q = quad("198.18.0.1", "198.18.0.2", 3478, 3479);
        let mut e = engine(vec![q], 5);
        let t = udp("198.18.9.9:5000", "198.18.0.1:3478");
        let answered = (0..20)
            .filter(|_| ask(&mut e, &t, &change(true, true)).is_some())
            .count();
        assert!((5..=6).contains(&answered), "{answered} of 20");
    }
}

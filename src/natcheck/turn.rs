//! `turnd nat-check turn:`: a TURN server checked end to end, the way `turnutils_uclient` is
//! used: allocate, permit our own peer socket, send through the relay to it and back, then
//! release the allocation. Every failure is said in words.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Instant;

use serde::Serialize;

use super::probe::{await_answer, random_tid, Ask, Request, Timing};
use crate::proto::attr::{decode_error_code, decode_text, decode_u32, decode_xor_address};
use crate::proto::framing::{next_frame, Frame};
use crate::proto::integrity::long_term_key_md5;
use crate::proto::{AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId};

/// REQUESTED-TRANSPORT UDP.
const UDP: u8 = 17;
/// Round trips through the relay.
const PINGS: usize = 5;

/// The TURN check's findings.
#[derive(Debug, Clone, Serialize)]
pub struct TurnReport {
    pub server: SocketAddr,
    pub transport: &'static str,
    pub user: String,
    pub realm: Option<String>,
    pub relayed: Option<SocketAddr>,
    pub reflexive: Option<SocketAddr>,
    /// The address our own peer socket had as the relay saw it.
    pub peer: Option<SocketAddr>,
    /// Data sent through the relay came back.
    pub data_returned: bool,
    /// The median round trip client → relay → peer → relay → client.
    pub rtt_ms: Option<f64>,
    pub ok: bool,
    pub verdict: String,
}

/// A control connection to the server.
enum Control {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream, Vec<u8>),
}

impl Control {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Control::Udp(s, to) => s.send_to(bytes, *to).map(|_| ()),
            Control::Tcp(s, _) => s.write_all(bytes),
        }
    }

    /// The next STUN message, or `None` at the deadline.
    fn recv(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self {
                Control::Udp(s, server) => {
                    s.set_read_timeout(Some(left))?;
                    let mut buf = vec![0u8; 2048];
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) if from == *server => {
                            buf.truncate(n);
                            return Ok(Some(buf));
                        }
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                            return Ok(None)
                        }
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                        Err(e) => return Err(e),
                    }
                }
                Control::Tcp(s, buffered) => {
                    match next_frame(buffered) {
                        Ok(Some(f)) => {
                            let frame: Vec<u8> = buffered.drain(..f.len().min(buffered.len())).collect();
                            if matches!(f, Frame::Stun(_)) {
                                return Ok(Some(frame));
                            }
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                    }
                    s.set_read_timeout(Some(left))?;
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(n) => buffered.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                            return Ok(None)
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Sends a request and waits for its response, retransmitting over UDP (RFC 8489 §6.2.1;
    /// over TCP, one send and the whole timeout).
    fn transact(&mut self, bytes: &[u8], tid: TransactionId, timing: Timing) -> io::Result<Option<Vec<u8>>> {
        let start = Instant::now();
        let give_up = start + timing.timeout();
        let udp = matches!(self, Control::Udp(..));
        let mut sends = 0u32;
        let mut next = start;
        loop {
            if Instant::now() >= next && (sends == 0 || (udp && sends < timing.rc)) {
                self.send(bytes)?;
                sends += 1;
                next += timing.rto * (1u32 << (sends - 1).min(20));
            }
            let wait = if udp && sends < timing.rc {
                next.min(give_up)
            } else {
                give_up
            };
            match self.recv(wait)? {
                Some(m)
                    if Message::parse(&m)
                        .is_ok_and(|p| p.transaction_id() == tid && p.class() != Class::Indication) =>
                {
                    return Ok(Some(m))
                }
                Some(_) => {}
                None if Instant::now() >= give_up => return Ok(None),
                None => {}
            }
        }
    }
}

/// A long-term-credential session: the realm and nonce the server handed out.
struct Session {
    user: String,
    password: String,
    realm: Option<String>,
    nonce: Vec<u8>,
    key: [u8; 16],
}

impl Session {
    fn request(
        &self,
        method: Method,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Option<()>,
    ) -> (TransactionId, Vec<u8>) {
        let tid = random_tid();
        let mut buf = vec![0u8; 1500];
        let typ = MessageType::new(method, Class::Request);
        let len = (|| {
            let mut w = MessageWriter::new(&mut buf, typ, tid).ok()?;
            body(&mut w)?;
            if let Some(realm) = &self.realm {
                w.attr(AttrType::USERNAME, self.user.as_bytes()).ok()?;
                w.attr(AttrType::REALM, realm.as_bytes()).ok()?;
                w.attr(AttrType::NONCE, &self.nonce).ok()?;
                w.message_integrity(&self.key).ok()?;
            }
            w.fingerprint().ok()?;
            Some(w.finish())
        })()
        .unwrap_or(0);
        buf.truncate(len);
        (tid, buf)
    }

    /// Sends `method` and returns the success response, answering 401 and 438 once each.
    fn call(
        &mut self,
        control: &mut Control,
        method: Method,
        timing: Timing,
        body: impl Fn(&mut MessageWriter<'_>) -> Option<()>,
        what: &str,
        port_hint: &str,
    ) -> Result<Vec<u8>, String> {
        for _ in 0..3 {
            let (tid, req) = self.request(method, &body);
            let resp = control
                .transact(&req, tid, timing)
                .map_err(|e| format!("{what}: the connection failed: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "{what}: no answer within {:.1} s: is {port_hint} open?",
                        timing.timeout().as_secs_f64()
                    )
                })?;
            let m = Message::parse(&resp).map_err(|e| format!("{what}: the server's answer is not STUN: {e}"))?;
            if m.class() == Class::Success {
                return Ok(resp);
            }
            let (code, reason) = m
                .get(AttrType::ERROR_CODE)
                .and_then(|a| decode_error_code(a.value).ok())
                .map_or((0, String::new()), |(c, r)| (c.0, r.to_string()));
            let realm = m
                .get(AttrType::REALM)
                .and_then(|a| decode_text(a.value, 763).ok())
                .map(str::to_string);
            let nonce = m.get(AttrType::NONCE).map(|a| a.value.to_vec());
            match code {
                401 if self.realm.is_none() => {
                    let (Some(realm), Some(nonce)) = (realm, nonce) else {
                        return Err(format!("{what}: 401 without REALM and NONCE"));
                    };
                    self.key = long_term_key_md5(&self.user, &realm, &self.password);
                    self.realm = Some(realm);
                    self.nonce = nonce;
                }
                438 => {
                    self.nonce = nonce.ok_or_else(|| format!("{what}: 438 without a new NONCE"))?;
                }
                401 => {
                    return Err(format!(
                        "{what}: 401: wrong password for user {:?} in realm {:?} (or an expired REST credential)",
                        self.user,
                        self.realm.as_deref().unwrap_or("")
                    ))
                }
                _ => {
                    let sep = if reason.is_empty() { "" } else { " " };
                    return Err(format!("{what}: {code}{sep}{reason}{}", meaning(code, method)));
                }
            }
        }
        Err(format!("{what}: the server kept asking for new credentials"))
    }
}

/// What an error code usually means for this check.
fn meaning(code: u16, method: Method) -> &'static str {
    match code {
        403 if method == Method::ALLOCATE => {
            ": the server does not relay for you (a STUN-only server has no credentials configured)"
        }
        403 => ": the server forbids this peer address (a deny list, or peers.allow)",
        437 => ": an allocation already exists on this 5-tuple; wait for it to expire",
        440 => ": the server cannot relay this address family",
        441 => ": the allocation was made with other credentials",
        442 => ": the server does not relay this transport",
        486 => ": this user has too many allocations (max_allocations_per_user)",
        508 => ": the server is out of relay ports or allocations",
        _ => "",
    }
}

/// Runs the check; `transport` is "udp" or "tcp".
pub fn check(
    server: SocketAddr,
    transport: &'static str,
    user: &str,
    password: &str,
    timing: Timing,
) -> io::Result<TurnReport> {
    let mut report = TurnReport {
        server,
        transport,
        user: user.to_string(),
        realm: None,
        relayed: None,
        reflexive: None,
        peer: None,
        data_returned: false,
        rtt_ms: None,
        ok: false,
        verdict: String::new(),
    };
    let ip = super::nat::local_ip_for(server)?;
    let port_hint = format!("{} {}", transport.to_uppercase(), server.port());
    let mut control = match transport {
        "tcp" => match TcpStream::connect_timeout(&server, timing.timeout()) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Control::Tcp(s, Vec::new())
            }
            Err(e) => {
                report.verdict = format!(
                    "cannot connect over TCP to {server}: {e}: is TCP {} open?",
                    server.port()
                );
                return Ok(report);
            }
        },
        _ => Control::Udp(UdpSocket::bind(SocketAddr::new(ip, 0))?, server),
    };
    let mut s = Session {
        user: user.to_string(),
        password: password.to_string(),
        realm: None,
        nonce: Vec::new(),
        key: [0; 16],
    };
    let result = run(&mut control, &mut s, &mut report, server, ip, timing, &port_hint);
    report.realm = s.realm.clone();
    match result {
        Ok(()) => {
            report.ok = true;
            report.verdict = format!(
                "TURN over {} works: relayed through {} and back",
                transport.to_uppercase(),
                report.relayed.map_or_else(String::new, |a| a.to_string())
            );
        }
        Err(e) => report.verdict = e,
    }
    // Release the allocation, if there is one; a failure here changes nothing above.
    if report.relayed.is_some() {
        let _ = s.call(
            &mut control,
            Method::REFRESH,
            timing,
            |w| w.attr_u32(AttrType::LIFETIME, 0).ok(),
            "Refresh",
            &port_hint,
        );
    }
    Ok(report)
}

fn run(
    control: &mut Control,
    s: &mut Session,
    report: &mut TurnReport,
    server: SocketAddr,
    ip: std::net::IpAddr,
    timing: Timing,
    port_hint: &str,
) -> Result<(), String> {
    let allocate = s.call(
        control,
        Method::ALLOCATE,
        timing,
        |w| w.attr(AttrType::REQUESTED_TRANSPORT, &[UDP, 0, 0, 0]).ok(),
        "Allocate",
        port_hint,
    )?;
    let m = Message::parse(&allocate).map_err(|e| e.to_string())?;
    let tid = m.transaction_id();
    let addr = |t: AttrType| m.get(t).and_then(|a| decode_xor_address(a.value, &tid).ok());
    let relayed = addr(AttrType::XOR_RELAYED_ADDRESS).ok_or("Allocate: the answer has no relayed address")?;
    report.relayed = Some(relayed);
    report.reflexive = addr(AttrType::XOR_MAPPED_ADDRESS);
    let _lifetime = m.get(AttrType::LIFETIME).and_then(|a| decode_u32(a.value).ok());

    // Our own peer: a UDP socket whose public address the server tells us.
    let peer = UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| e.to_string())?;
    let probe = Request::binding(server, Ask::default());
    let mut peer_addr = None;
    for k in 0..timing.rc.max(1) {
        let _ = peer.send_to(&probe.bytes, server);
        if let Some(a) = await_answer(&peer, probe.tid, timing.rto * (1u32 << k.min(20))).map_err(|e| e.to_string())? {
            peer_addr = a.mapped;
            break;
        }
    }
    let peer_addr = match peer_addr {
        Some(a) => a,
        // No UDP to the server (TURN over TCP through a UDP-blocking firewall): the relay may
        // still reach this host directly.
        None => peer.local_addr().map_err(|e| e.to_string())?,
    };
    report.peer = Some(peer_addr);
    s.call(
        control,
        Method::CREATE_PERMISSION,
        timing,
        |w| w.xor_address(AttrType::XOR_PEER_ADDRESS, peer_addr).ok(),
        "CreatePermission",
        port_hint,
    )?;

    // The peer speaks first, so that a NAT in front of it lets the relay's packets in.
    let _ = peer.send_to(b"turnd nat-check: open", relayed);
    // Round trips: client -> Send -> relay -> peer, which echoes -> relay -> Data -> client.
    let mut rtts = vec![];
    for i in 0..PINGS {
        let payload = format!("turnd nat-check {i}");
        let tid = random_tid();
        let mut buf = vec![0u8; 256];
        let typ = MessageType::new(Method::SEND, Class::Indication);
        let len = (|| {
            let mut w = MessageWriter::new(&mut buf, typ, tid).ok()?;
            w.xor_address(AttrType::XOR_PEER_ADDRESS, peer_addr).ok()?;
            w.attr(AttrType::DATA, payload.as_bytes()).ok()?;
            Some(w.finish())
        })()
        .ok_or("cannot build a Send indication")?;
        let sent = Instant::now();
        control
            .send(buf.get(..len).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let deadline = sent + timing.rto * 4;
        // The peer echoes what reaches it from the relay.
        let _ = peer.set_read_timeout(Some(timing.rto * 2));
        let mut pbuf = [0u8; 512];
        match peer.recv_from(&mut pbuf) {
            Ok((n, from)) if from == relayed => {
                let _ = peer.send_to(pbuf.get(..n).unwrap_or_default(), relayed);
            }
            _ => continue,
        }
        while let Some(m) = control.recv(deadline).map_err(|e| e.to_string())? {
            let Ok(msg) = Message::parse(&m) else { continue };
            if msg.method() == Method::DATA && msg.get(AttrType::DATA).is_some_and(|d| d.value == payload.as_bytes()) {
                rtts.push(sent.elapsed());
                break;
            }
        }
    }
    if rtts.is_empty() {
        return Err(format!(
            "allocated {relayed}, but no data came back through the relay: the relay could not reach {peer_addr} \
             (a firewall on UDP to or from the relay ports?)"
        ));
    }
    rtts.sort();
    report.data_returned = true;
    report.rtt_ms = rtts.get(rtts.len() / 2).map(|d| d.as_secs_f64() * 1e3);
    Ok(())
}

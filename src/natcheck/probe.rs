//! STUN transactions over one UDP socket, several at once, retransmitted as RFC 8489 §6.2.1
//! says: the first send at once, then after RTO, 2·RTO, 4·RTO… until Rc sends, then Rm·RTO
//! more before the transaction times out.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::proto::attr::{decode_address, decode_error_code, decode_xor_address};
use crate::proto::{AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId};

/// RFC 8489's retransmission parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The first retransmission timeout (RFC 8489: 500 ms or more).
    pub rto: Duration,
    /// Requests sent in all (RFC 8489: 7).
    pub rc: u32,
    /// The last wait, in RTOs (RFC 8489: 16).
    pub rm: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            rto: Duration::from_millis(500),
            rc: 7,
            rm: 16,
        }
    }
}

impl Timing {
    /// How long a transaction lasts when nothing answers.
    pub fn timeout(&self) -> Duration {
        let sends = self.rc.max(1);
        // Waits of RTO, 2·RTO, ... between the Rc sends, then Rm·RTO.
        let between: u32 = (0..sends - 1).map(|k| 1u32 << k.min(20)).sum();
        self.rto * (between + self.rm)
    }
}

/// A Binding request with a fresh transaction ID, and what the server is asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub to: SocketAddr,
    pub tid: TransactionId,
    pub bytes: Vec<u8>,
}

/// Options of a Binding request (RFC 5780).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    pub change_ip: bool,
    pub change_port: bool,
    pub response_port: Option<u16>,
}

pub fn random_tid() -> TransactionId {
    let mut t = [0u8; 12];
    // A failing OS generator leaves a fixed ID, which still works for one run.
    let _ = getrandom::fill(&mut t);
    TransactionId(t)
}

impl Request {
    pub fn binding(to: SocketAddr, ask: Ask) -> Request {
        let tid = random_tid();
        let mut buf = [0u8; 64];
        let typ = MessageType::new(Method::BINDING, Class::Request);
        let len = (|| {
            let mut w = MessageWriter::new(&mut buf, typ, tid).ok()?;
            if ask.change_ip || ask.change_port {
                let flags = if ask.change_ip { 4 } else { 0 } | if ask.change_port { 2 } else { 0 };
                w.attr(AttrType::CHANGE_REQUEST, &[0, 0, 0, flags]).ok()?;
            }
            if let Some(p) = ask.response_port {
                let b = p.to_be_bytes();
                w.attr(AttrType::RESPONSE_PORT, &[b[0], b[1], 0, 0]).ok()?;
            }
            w.fingerprint().ok()?;
            Some(w.finish())
        })()
        .unwrap_or(0);
        Request {
            to,
            tid,
            bytes: buf.get(..len).unwrap_or_default().to_vec(),
        }
    }
}

/// What came back for one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Where the answer came from, as the socket saw it.
    pub from: SocketAddr,
    pub class: Class,
    pub mapped: Option<SocketAddr>,
    pub origin: Option<SocketAddr>,
    pub other: Option<SocketAddr>,
    pub error: Option<(u16, String)>,
    /// From the first send to the answer.
    pub rtt: Duration,
}

impl Answer {
    fn parse(bytes: &[u8], from: SocketAddr, rtt: Duration) -> Option<(TransactionId, Answer)> {
        let m = Message::parse(bytes).ok()?;
        let tid = m.transaction_id();
        let get = |t: AttrType| m.get(t).map(|a| a.value);
        let mapped = get(AttrType::XOR_MAPPED_ADDRESS)
            .and_then(|v| decode_xor_address(v, &tid).ok())
            .or_else(|| get(AttrType::MAPPED_ADDRESS).and_then(|v| decode_address(v).ok()));
        Some((
            tid,
            Answer {
                from,
                class: m.class(),
                mapped,
                origin: get(AttrType::RESPONSE_ORIGIN).and_then(|v| decode_address(v).ok()),
                other: get(AttrType::OTHER_ADDRESS).and_then(|v| decode_address(v).ok()),
                error: get(AttrType::ERROR_CODE)
                    .and_then(|v| decode_error_code(v).ok())
                    .map(|(c, r)| (c.0, r.to_string())),
                rtt,
            },
        ))
    }
}

struct Pending {
    sends: u32,
    next: Option<Instant>,
    give_up: Instant,
    answer: Option<Answer>,
}

/// Runs `requests` at once on `sock` and returns each one's answer, or `None` when it timed
/// out. `accept` says which classes count as an answer (a hairpinning test waits for its own
/// request to come back).
pub fn transact(
    sock: &UdpSocket,
    requests: &[Request],
    timing: Timing,
    accept: impl Fn(Class) -> bool,
) -> io::Result<Vec<Option<Answer>>> {
    let start = Instant::now();
    let mut pending: Vec<Pending> = requests
        .iter()
        .map(|_| Pending {
            sends: 0,
            next: Some(start),
            give_up: start + timing.timeout(),
            answer: None,
        })
        .collect();
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        for (p, r) in pending.iter_mut().zip(requests) {
            if p.answer.is_some() {
                continue;
            }
            if let Some(at) = p.next.filter(|&at| at <= now) {
                // A send that fails (no route, ICMP) counts as sent: the timer decides.
                let _ = sock.send_to(&r.bytes, r.to);
                p.sends += 1;
                p.next = (p.sends < timing.rc.max(1)).then(|| at + timing.rto * (1u32 << (p.sends - 1).min(20)));
                if p.next.is_none() {
                    p.give_up = now + timing.rto * timing.rm;
                }
            }
        }
        let open = pending.iter().filter(|p| p.answer.is_none() && p.give_up > now);
        let Some(wake) = open.map(|p| p.next.unwrap_or(p.give_up).min(p.give_up)).min() else {
            break;
        };
        sock.set_read_timeout(Some(wake.saturating_duration_since(now).max(Duration::from_millis(1))))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let Some((tid, answer)) = Answer::parse(buf.get(..n).unwrap_or_default(), from, start.elapsed()) else {
                    continue;
                };
                if !accept(answer.class) {
                    continue;
                }
                if let Some(i) = requests.iter().position(|r| r.tid == tid) {
                    if let Some(p) = pending.get_mut(i) {
                        p.answer.get_or_insert(answer);
                    }
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            // ICMP port unreachable surfaces here on Linux; the timer still decides.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pending.into_iter().map(|p| p.answer).collect())
}

/// Waits up to `timeout` for the answer to `tid` on `sock`.
pub fn await_answer(sock: &UdpSocket, tid: TransactionId, timeout: Duration) -> io::Result<Option<Answer>> {
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some((t, a)) = Answer::parse(buf.get(..n).unwrap_or_default(), from, start.elapsed()) {
                    if t == tid && response(a.class) {
                        return Ok(Some(a));
                    }
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
}

/// A response (success or error), as a server's answer is.
pub fn response(class: Class) -> bool {
    matches!(class, Class::Success | Class::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_defaults_give_up_after_39_5_seconds() {
        assert_eq!(Timing::default().timeout(), Duration::from_millis(39_500));
        let short = Timing {
            rto: Duration::from_millis(100),
            rc: 3,
            rm: 4,
        };
        assert_eq!(short.timeout(), Duration::from_millis(700));
    }

    #[test]
    fn retransmits_until_answered_and_times_out_otherwise() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let timing = Timing {
            rto: Duration::from_millis(50),
            rc: 3,
            rm: 2,
        };
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let reqs = [
            Request::binding(server.local_addr().unwrap(), Ask::default()),
            Request::binding(silent.local_addr().unwrap(), Ask::default()),
        ];
        let answerer = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            // Drop the first copy: the answer must come from a retransmission.
            let _ = server.recv_from(&mut buf).unwrap();
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let m = Message::parse(&buf[..n]).unwrap();
            let mut out = [0u8; 64];
            let typ = MessageType::new(Method::BINDING, Class::Success);
            let mut w = MessageWriter::new(&mut out, typ, m.transaction_id()).unwrap();
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, from).unwrap();
            let len = w.finish();
            server.send_to(&out[..len], from).unwrap();
        });
        let started = Instant::now();
        let answers = transact(&client, &reqs, timing, response).unwrap();
        answerer.join().unwrap();
        let a = answers[0].as_ref().expect("answered on the retransmission");
        assert_eq!(a.mapped, Some(client.local_addr().unwrap()));
        assert!(a.rtt >= Duration::from_millis(50), "{:?}", a.rtt);
        assert!(answers[1].is_none());
        // Both ran at once: the silent one's 350 ms, not the sum.
        let took = started.elapsed();
        assert!(took >= timing.timeout() && took < Duration::from_secs(2), "{took:?}");
        let mut sent = 0;
        silent.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 128];
        while silent.recv(&mut buf).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 3, "Rc requests to the silent server");
    }
}

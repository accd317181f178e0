//! NAT behaviour discovery (RFC 5780) on the real binary: answers leave from the sockets
//! CHANGE-REQUEST asks for, RESPONSE-PORT reaches only the requester's own IP, every config
//! error is named, and `turnd nat-check` against turnd over UDP and TCP. Servers with fixed
//! ports run in a network namespace of their own, with 127.0.0.1 and 127.0.0.2 both local.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{turn_config, Turnd, BIN};
use turnd::proto::attr::{decode_address, decode_xor_address};
use turnd::proto::{AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId};

const DISCOVERY: &str = r#"threads = 2
[[listen]]
address = "127.0.0.1:3478"
protocols = ["udp", "tcp"]

[nat_discovery]
alternate_addresses = ["127.0.0.2"]
"#;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn request(tid: u8, body: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let typ = MessageType::new(Method::BINDING, Class::Request);
    let mut w = MessageWriter::new(&mut buf, typ, TransactionId([tid; 12])).unwrap();
    body(&mut w);
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn change(tid: u8, ip: bool, port: bool) -> Vec<u8> {
    request(tid, |w| {
        let flags = if ip { 4 } else { 0 } | if port { 2 } else { 0 };
        w.attr(AttrType::CHANGE_REQUEST, &[0, 0, 0, flags]).unwrap();
    })
}

#[derive(Debug)]
struct Seen {
    class: Class,
    code: Option<u16>,
    mapped: Option<SocketAddr>,
    origin: Option<SocketAddr>,
    other: Option<SocketAddr>,
}

fn seen(bytes: &[u8]) -> Seen {
    let m = Message::parse(bytes).unwrap();
    let tid = m.transaction_id();
    let get = |t: AttrType| m.get(t).map(|a| a.value);
    Seen {
        class: m.class(),
        code: get(AttrType::ERROR_CODE).map(|v| u16::from(v[2]) * 100 + u16::from(v[3])),
        mapped: get(AttrType::XOR_MAPPED_ADDRESS).map(|v| decode_xor_address(v, &tid).unwrap()),
        origin: get(AttrType::RESPONSE_ORIGIN).map(|v| decode_address(v).unwrap()),
        other: get(AttrType::OTHER_ADDRESS).map(|v| decode_address(v).unwrap()),
    }
}

fn udp(bind: &str) -> UdpSocket {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn metrics(t: &Turnd) -> String {
    let http = t.http.expect("metrics listener");
    t.inside(|| {
        let mut s = TcpStream::connect(http).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
}

#[test]
fn answers_leave_from_the_address_change_request_asks_for() {
    let t = Turnd::start_isolated(DISCOVERY);
    // The three other addresses are served as listeners too.
    for l in ["127.0.0.1:3479", "127.0.0.2:3478", "127.0.0.2:3479"] {
        assert!(
            t.udp.contains(&a(l)) && t.tcp.contains(&a(l)),
            "{l} in {:?} {:?}",
            t.udp,
            t.tcp
        );
    }
    t.inside(|| {
        let quad = [
            a("127.0.0.1:3478"),
            a("127.0.0.1:3479"),
            a("127.0.0.2:3478"),
            a("127.0.0.2:3479"),
        ];
        let sock = udp("127.0.0.1:0");
        let me = sock.local_addr().unwrap();
        let mut buf = [0u8; 2048];
        for (i, &to) in quad.iter().enumerate() {
            for (ci, cp) in [(false, false), (true, false), (false, true), (true, true)] {
                sock.send_to(&change(1, ci, cp), to).unwrap();
                let (n, from) = sock.recv_from(&mut buf).expect("answered");
                let expect = quad[i ^ (usize::from(ci) << 1) ^ usize::from(cp)];
                assert_eq!(from, expect, "asked at {to} with ip={ci} port={cp}");
                let s = seen(&buf[..n]);
                assert_eq!(s.class, Class::Success);
                assert_eq!(s.origin, Some(expect), "RESPONSE-ORIGIN is the real source");
                assert_eq!(s.other, Some(quad[3 - i]), "OTHER-ADDRESS differs in IP and port");
                assert_eq!(s.mapped, Some(me));
            }
        }
    });
    let m = metrics(&t);
    for (kind, n) in [
        ("change_ip", 4),
        ("change_port", 4),
        ("change_both", 4),
        ("response_port", 0),
    ] {
        let line = format!("turnd_nat_discovery_requests_total{{kind=\"{kind}\"}} {n}");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[test]
fn response_port_reaches_only_the_requesters_own_ip() {
    let t = Turnd::start_isolated(DISCOVERY);
    t.inside(|| {
        let asker = udp("127.0.0.1:0");
        let target = udp("127.0.0.1:0");
        let port = target.local_addr().unwrap().port();
        // The same port on another IP of this host: it must hear nothing.
        let other_ip = udp(&format!("127.0.0.3:{port}"));
        other_ip.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let req = request(2, |w| {
            let p = port.to_be_bytes();
            w.attr(AttrType::RESPONSE_PORT, &[p[0], p[1], 0, 0]).unwrap();
        });
        asker.send_to(&req, a("127.0.0.1:3478")).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = target.recv_from(&mut buf).expect("the answer reaches the named port");
        assert_eq!(from, a("127.0.0.1:3478"));
        assert_eq!(seen(&buf[..n]).mapped, Some(asker.local_addr().unwrap()));
        assert!(other_ip.recv_from(&mut buf).is_err(), "another IP heard it");
        asker.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert!(asker.recv_from(&mut buf).is_err(), "the asker heard it");
        // PADDING with RESPONSE-PORT would aim a request's worth of bytes elsewhere: 400.
        let both = request(3, |w| {
            let p = port.to_be_bytes();
            w.attr(AttrType::RESPONSE_PORT, &[p[0], p[1], 0, 0]).unwrap();
            w.attr(AttrType::PADDING, &[0; 512]).unwrap();
        });
        asker.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        asker.send_to(&both, a("127.0.0.1:3478")).unwrap();
        let (n, _) = asker.recv_from(&mut buf).unwrap();
        assert_eq!(seen(&buf[..n]).code, Some(400));
    });
}

#[test]
fn over_tcp_every_address_answers_and_change_request_is_refused() {
    let t = Turnd::start_isolated(DISCOVERY);
    t.inside(|| {
        let quad = [
            a("127.0.0.1:3478"),
            a("127.0.0.1:3479"),
            a("127.0.0.2:3478"),
            a("127.0.0.2:3479"),
        ];
        for (i, &to) in quad.iter().enumerate() {
            let mut s = TcpStream::connect(to).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut ask = |req: &[u8]| {
                s.write_all(req).unwrap();
                let mut head = [0u8; 20];
                s.read_exact(&mut head).unwrap();
                let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
                let mut body = vec![0u8; len];
                s.read_exact(&mut body).unwrap();
                seen(&[head.to_vec(), body].concat())
            };
            let plain = ask(&request(4, |_| {}));
            assert_eq!((plain.origin, plain.other), (Some(to), Some(quad[3 - i])));
            assert_eq!(
                ask(&change(5, true, true)).code,
                Some(400),
                "TCP cannot answer from elsewhere"
            );
        }
    });
}

#[test]
fn off_by_default_change_request_is_unknown() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let sock = udp("127.0.0.1:0");
    sock.send_to(&change(6, true, true), t.udp[0]).unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(from, t.udp[0]);
    let s = seen(&buf[..n]);
    assert_eq!((s.code, s.origin, s.other), (Some(420), None, None));
}

fn check_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnd.toml");
    std::fs::write(&path, common::isolate(config, dir.path())).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_config_error_is_named_where_it_is() {
    let listen = |addr: &str| format!("[[listen]]\naddress = \"{addr}\"\nprotocols = [\"udp\", \"tcp\"]\n");
    let nd = |body: &str| format!("[nat_discovery]\n{body}\n");
    let cases = [
        // Not local: 198.18.255.254 is on no interface of this host.
        (
            format!("{}{}", listen("127.0.0.1:3478"), nd("alternate_addresses = [\"198.18.255.254\"]")),
            "alternate address 198.18.255.254 is not an address of this host",
        ),
        (
            format!("{}{}", listen("127.0.0.1:3478"), nd("alternate_addresses = [\"::1\"]")),
            "alternate address ::1 is IPv6, but no [[listen]] has a concrete IPv6 address",
        ),
        (
            format!("{}{}", listen("0.0.0.0:3478"), nd("alternate_addresses = [\"127.0.0.2\"]")),
            "a wildcard such as 0.0.0.0 or [::] cannot be the primary",
        ),
        (
            format!("{}{}{}", listen("127.0.0.1:3478"), listen("127.0.0.1:3479"), nd("alternate_addresses = [\"127.0.0.2\"]")),
            "NAT discovery needs 127.0.0.1:3479 for listener 127.0.0.1:3478, but listener 127.0.0.1:3479 already serves it",
        ),
        (
            format!("{}{}", listen("127.0.0.1:3478"), nd("alternate_addresses = [\"127.0.0.2\"]\nalternate_port = 3478")),
            "alternate_port 3478 is the listener's own port",
        ),
        (
            format!("{}{}", listen("127.0.0.1:3478"), nd("alternate_addresses = [\"127.0.0.1\"]")),
            "is a listener's own address",
        ),
        (
            format!("{}{}", listen("127.0.0.1:0"), nd("alternate_addresses = [\"127.0.0.2\"]")),
            "has port 0: NAT discovery needs a fixed port",
        ),
        (
            format!("{}{}", listen("127.0.0.1:3478"), nd("alternate_addresses = [\"127.0.0.2\", \"127.0.0.3\"]")),
            "takes at most one IPv4 and one IPv6 address",
        ),
    ];
    for (config, want) in cases {
        let (code, err) = check_config(&config);
        assert_eq!(code, 1, "{config}\n{err}");
        assert!(err.contains(want), "want {want:?}, got {err:?}");
        assert!(err.contains("turnd.toml:"), "path:line:col in {err:?}");
    }
    let (code, err) = check_config(&format!(
        "{}{}",
        listen("127.0.0.1:3478"),
        nd("alternate_addresses = [\"127.0.0.2\"]")
    ));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn amplification_with_discovery_on_is_bounded() {
    let t = Turnd::start_isolated(DISCOVERY);
    let (bare, padded) = t.inside(|| {
        let sock = udp("127.0.0.1:0");
        let mut buf = [0u8; 2048];
        let mut ratio = |req: &[u8]| {
            sock.send_to(req, a("127.0.0.1:3478")).unwrap();
            let (n, _) = sock.recv_from(&mut buf).unwrap();
            n as f64 / req.len() as f64
        };
        let bare = ratio(&request(7, |_| {}));
        let padded = (0..=1400)
            .step_by(100)
            .map(|len| ratio(&request(8, |w| w.attr(AttrType::PADDING, &vec![0; len]).unwrap())))
            .fold(0.0, f64::max);
        (bare, padded)
    });
    // 20 bytes in; XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS out: 56 bytes.
    assert!(bare <= 2.8, "Binding with discovery x{bare}");
    // An empty PADDING gets 60 bytes for 24; from a 60-byte request on, never more out than in.
    assert!(padded <= 2.5, "padded Binding x{padded}");
    eprintln!("amplification with [nat_discovery]: Binding x{bare:.2}, padded at most x{padded:.2}");
}

fn nat_check(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).arg("nat-check").args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn nat_check_turn_against_turnd_over_udp_and_tcp() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let fast = ["--rto", "100ms", "--rc", "3"];
    for (transport, addr) in [("udp", t.udp[0]), ("tcp", t.tcp[0])] {
        let url = format!("turn:{addr}?transport={transport}");
        let (code, out) = nat_check(
            &[
                &[url.as_str(), "--user", "alice", "--password", "wonderland"],
                &fast[..],
            ]
            .concat(),
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("data came back:    yes"), "{out}");
        assert!(
            out.contains(&format!("TURN over {} works", transport.to_uppercase())),
            "{out}"
        );
        let (code, out) = nat_check(&[&[url.as_str(), "--user", "alice", "--password", "nope"], &fast[..]].concat());
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("401: wrong password for user \"alice\" in realm \"test.turnd\""),
            "{out}"
        );
        // A REST credential minted from the secret works the same.
        let (code, out) = nat_check(&[&[url.as_str(), "--secret", "rest-secret", "--json"], &fast[..]].concat());
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["data_returned"], true);
        assert!(v["relayed"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    // Every allocation the checks made was released: the log says so for each.
    let log = t.log_until_exit();
    let made = log.iter().filter(|l| l.contains("allocation created")).count();
    let released = log.iter().filter(|l| l.contains("reason=\"refresh 0\"")).count();
    assert_eq!((made, released), (4, 4), "{log:#?}");
}

#[test]
fn nat_check_names_the_missing_rfc5780_and_still_gives_the_public_address() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let (code, out) = nat_check(&[&format!("stun:{}", t.udp[0]), "--rto", "100ms", "--rc", "3"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("does not support RFC 5780"), "{out}");
    assert!(out.contains("public address: 127.0.0.1:"), "{out}");
    // A STUN-only server (no credentials) says it does not relay.
    let stun_only = Turnd::start(&common::loopback_config("threads = 1"));
    let url = format!("turn:{}?transport=udp", stun_only.udp[0]);
    let (code, out) = nat_check(&[&url, "--user", "a", "--password", "b", "--rto", "100ms", "--rc", "3"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Allocate: 403: the server does not relay for you"),
        "{out}"
    );
    // Nothing listening: the words say what to check.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (code, out) = nat_check(&[&format!("stun:{addr}"), "--rto", "50ms", "--rc", "2", "--rm", "3"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("no answer over UDP within 0.2 s: is UDP {} open", addr.port())),
        "{out}"
    );
}

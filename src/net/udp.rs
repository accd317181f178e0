//! The UDP listener driver: drain a batch of datagrams per readiness event, answer each.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::metrics::DropReason;
use crate::proto::MAX_MESSAGE_LEN;
use crate::server::{Engine, FiveTuple, Transport};

/// Datagrams handled per wake-up before yielding to the shard's other tasks.
const BATCH: usize = 64;

pub async fn serve(sock: UdpSocket, engine: Rc<RefCell<Engine>>, mut stop: watch::Receiver<bool>) {
    let Ok(local) = sock.local_addr() else { return };
    let mut rx = vec![0u8; MAX_MESSAGE_LEN];
    let mut tx = vec![0u8; MAX_MESSAGE_LEN];
    loop {
        tokio::select! {
            r = sock.readable() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        for _ in 0..BATCH {
            let (n, from) = match sock.try_recv_from(&mut rx) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends surface here; they concern one peer only.
                Err(_) => continue,
            };
            let tuple = FiveTuple {
                transport: Transport::Udp,
                client: from,
                server: local,
            };
            let reply = engine.borrow_mut().handle_client(now, &tuple, &rx[..n], &mut tx);
            if let Some(len) = reply {
                if sock.try_send_to(&tx[..len], from).is_err() {
                    engine.borrow().metrics().dropped(DropReason::send_failed);
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

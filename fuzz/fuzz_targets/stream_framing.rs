//! ChannelData and TCP stream framing: cut a stream into frames the way the TCP driver does;
//! every frame is within the buffer and the walk always makes progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnd::proto::{framing, ChannelData, Message};

fuzz_target!(|data: &[u8]| {
    let _ = ChannelData::parse(data);
    let mut rest = data;
    while let Ok(Some(frame)) = framing::next_frame(rest) {
        let n = frame.len();
        assert!(n >= 4 && n <= rest.len());
        match frame {
            framing::Frame::Stun(_) => {
                let _ = Message::parse(&rest[..n]);
            }
            framing::Frame::ChannelData(_) => {
                assert!(ChannelData::parse(&rest[..n]).is_ok());
            }
        }
        rest = &rest[n..];
    }
});

//! Stream framing for TCP and TLS (RFC 8489 §6.2.2, RFC 8656 §12.5): a byte stream carries
//! STUN messages and ChannelData messages back to back; ChannelData is padded to four bytes.

use super::{pad4, HEADER_LEN, MAGIC_COOKIE};

/// One complete frame at the start of a stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A STUN message of this many bytes.
    Stun(usize),
    /// A ChannelData message occupying this many bytes, padding included.
    ChannelData(usize),
}

impl Frame {
    /// Bytes the frame occupies in the stream.
    pub fn len(self) -> usize {
        match self {
            Frame::Stun(n) | Frame::ChannelData(n) => n,
        }
    }

    /// Always false: a frame is at least a header.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// The stream cannot be a STUN/TURN stream; the connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bits are 0b10 or 0b11: neither STUN nor ChannelData.
    #[error("neither STUN nor ChannelData")]
    UnknownProtocol,
    /// A STUN header with the wrong magic cookie.
    #[error("bad magic cookie")]
    BadMagicCookie,
    /// A STUN length that is not a multiple of four.
    #[error("unaligned STUN length")]
    UnalignedLength,
}

/// Looks at the start of `buf`. Returns `Ok(Some(frame))` when a whole frame is buffered,
/// `Ok(None)` when more bytes are needed, and an error as soon as the bytes seen cannot start
/// a valid frame, so that garbage is rejected early.
pub fn next_frame(buf: &[u8]) -> Result<Option<Frame>, FrameError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    match first >> 6 {
        0b00 => {
            if let Some(cookie) = buf.get(4..8) {
                if cookie != MAGIC_COOKIE.to_be_bytes() {
                    return Err(FrameError::BadMagicCookie);
                }
            }
            let Some(h) = buf.get(..4) else { return Ok(None) };
            let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if len % 4 != 0 {
                return Err(FrameError::UnalignedLength);
            }
            let total = HEADER_LEN + len;
            Ok((buf.len() >= total).then_some(Frame::Stun(total)))
        }
        0b01 => {
            let Some(h) = buf.get(..4) else { return Ok(None) };
            let total = 4 + pad4(usize::from(u16::from_be_bytes([h[2], h[3]])));
            Ok((buf.len() >= total).then_some(Frame::ChannelData(total)))
        }
        _ => Err(FrameError::UnknownProtocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_and_complete_stun_frames() {
        let mut m = vec![0u8, 1, 0, 4, 0x21, 0x12, 0xA4, 0x42];
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&[0x80, 0x22, 0, 0]);
        for cut in 0..m.len() {
            assert_eq!(next_frame(&m[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(next_frame(&m), Ok(Some(Frame::Stun(24))));
        m.extend_from_slice(&[0, 1]);
        assert_eq!(next_frame(&m), Ok(Some(Frame::Stun(24))));
    }

    #[test]
    fn channel_data_frames_include_padding() {
        let m = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(next_frame(&m[..9]), Ok(None));
        assert_eq!(next_frame(&m), Ok(Some(Frame::ChannelData(12))));
    }

    #[test]
    fn garbage_is_rejected_early() {
        assert_eq!(next_frame(b"\xff\xfe garbage"), Err(FrameError::UnknownProtocol));
        // A TLS ClientHello starts 0x16 0x03: STUN-shaped, but the cookie gives it away.
        assert_eq!(
            next_frame(&[0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0, 0]),
            Err(FrameError::BadMagicCookie)
        );
        assert_eq!(next_frame(&[0, 1, 0, 0, 1, 2, 3, 4]), Err(FrameError::BadMagicCookie));
        assert_eq!(next_frame(&[0, 1, 0, 3]), Err(FrameError::UnalignedLength));
    }
}

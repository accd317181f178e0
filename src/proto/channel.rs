//! ChannelData messages (RFC 8656 §12.4): a 4-byte header then application data.

use super::pad4;

/// A channel number: any value whose first two bits are 01 (0x4000..=0x7FFF), which is what
/// makes a packet ChannelData on the wire. RFC 8656 lets clients bind only 0x4000..=0x4FFF
/// ([`ChannelNumber::RFC8656_MAX`]); RFC 5766 allowed up to 0x7FFE. Which numbers a
/// ChannelBind may use is the engine's policy, not the codec's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    pub const MIN: u16 = 0x4000;
    /// Highest value that is ChannelData-shaped.
    pub const MAX: u16 = 0x7FFF;
    /// Highest number RFC 8656 lets a client bind.
    pub const RFC8656_MAX: u16 = 0x4FFF;
    /// Highest number RFC 5766 let a client bind.
    pub const RFC5766_MAX: u16 = 0x7FFE;

    /// Returns the channel number if `n` is ChannelData-shaped.
    pub fn new(n: u16) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&n).then_some(ChannelNumber(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// Why bytes are not a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    #[error("shorter than a ChannelData header")]
    TooShort,
    #[error("channel number outside 0x4000-0x7FFF")]
    BadChannel,
    #[error("length field exceeds the packet")]
    Truncated,
}

/// A ChannelData message borrowing the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: ChannelNumber,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message. Bytes past the length field (padding over UDP) are
    /// ignored; a packet shorter than the length field claims is refused (RFC 8656 §12.5).
    pub fn parse(buf: &'a [u8]) -> Result<Self, ChannelDataError> {
        let h = buf.get(..4).ok_or(ChannelDataError::TooShort)?;
        let channel = ChannelNumber::new(u16::from_be_bytes([h[0], h[1]])).ok_or(ChannelDataError::BadChannel)?;
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let data = buf.get(4..4 + len).ok_or(ChannelDataError::Truncated)?;
        Ok(ChannelData { channel, data })
    }

    /// Encodes a ChannelData header and `data` into `out`, padded to a multiple of four when
    /// `pad` is set (always over TCP and TLS). Returns the encoded length, or `None` when
    /// `out` is too small or `data` longer than 65535 bytes.
    pub fn encode(channel: ChannelNumber, data: &[u8], pad: bool, out: &mut [u8]) -> Option<usize> {
        let len = u16::try_from(data.len()).ok()?;
        let total = if pad { 4 + pad4(data.len()) } else { 4 + data.len() };
        let slot = out.get_mut(..total)?;
        slot[..2].copy_from_slice(&channel.0.to_be_bytes());
        slot[2..4].copy_from_slice(&len.to_be_bytes());
        slot[4..4 + data.len()].copy_from_slice(data);
        slot[4 + data.len()..].fill(0);
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_range_is_enforced() {
        assert!(ChannelNumber::new(0x3FFF).is_none());
        assert!(ChannelNumber::new(0x4000).is_some());
        assert!(ChannelNumber::new(0x4FFF).is_some());
        assert!(ChannelNumber::new(0x7FFF).is_some());
        assert!(ChannelNumber::new(0x8000).is_none());
    }

    #[test]
    fn round_trip_with_and_without_padding() {
        let ch = ChannelNumber::new(0x4001).unwrap();
        let mut out = [0xAAu8; 16];
        let n = ChannelData::encode(ch, b"hello", true, &mut out).unwrap();
        assert_eq!(n, 12);
        assert_eq!(&out[9..12], &[0, 0, 0], "padding must be zero");
        let cd = ChannelData::parse(&out[..n]).unwrap();
        assert_eq!((cd.channel, cd.data), (ch, &b"hello"[..]));
        let n = ChannelData::encode(ch, b"hello", false, &mut out).unwrap();
        assert_eq!(n, 9);
        assert_eq!(ChannelData::parse(&out[..n]).unwrap().data, b"hello");
        assert_eq!(ChannelData::parse(&out[..8]), Err(ChannelDataError::Truncated));
    }
}

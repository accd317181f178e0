//! Why the engine refused a TURN request: one variant per cause, each with the STUN error code
//! the client gets, the reason the log line gives, and the setting that changes the answer.

use crate::proto::ErrorCode;

/// A refused request. The code goes on the wire; the reason and the setting go only to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An Allocate without REQUESTED-TRANSPORT.
    MissingTransport,
    /// REQUESTED-TRANSPORT of the wrong length.
    MalformedTransport,
    /// A transport other than UDP.
    UnsupportedTransport,
    /// A request other than Allocate on a 5-tuple with no allocation.
    NoAllocation,
    /// An Allocate on a 5-tuple that already has one (not a retransmission).
    AllocationExists,
    /// No users and no secrets: this server does not relay.
    RelayDisabled,
    /// The request's user is not the allocation's.
    WrongCredentials,
    MalformedLifetime,
    /// SIGTERM: new allocations are refused while open ones drain.
    Draining,
    /// RESERVATION-TOKEN together with EVEN-PORT or REQUESTED-ADDRESS-FAMILY.
    TokenWithOthers,
    /// A RESERVATION-TOKEN this server never issued.
    UnknownToken,
    MalformedEvenPort,
    /// EVEN-PORT with the R bit: reserving port + 1 is not offered.
    EvenPortReservation,
    /// REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together.
    BothFamilies,
    UnknownFamily,
    AdditionalNotIpv6,
    /// `relay.max_allocations` is reached.
    ServerQuota,
    /// `relay.max_allocations_per_user` is reached for this user.
    UserQuota,
    /// No relay address of the requested family.
    NoRelayFamily,
    /// The kernel refused a relay socket.
    RelaySocket,
    /// Every port of `relay.ports` is in use.
    PortsExhausted,
    /// A Refresh names a family the allocation has no relay of.
    RefreshFamily,
    /// The peer is of another family than the relay.
    PeerFamily,
    /// The peer is in the built-in deny list.
    PeerDenied,
    TooManyPermissions,
    MalformedPeer,
    TooManyPeers,
    MissingPeer,
    MalformedChannel,
    /// A channel number above RFC 8656's 0x4FFF.
    ChannelRange,
    ChannelTaken,
    PeerOnOtherChannel,
}

impl Refusal {
    /// The error code the client receives.
    pub fn code(self) -> ErrorCode {
        use Refusal::*;
        match self {
            MissingTransport | MalformedTransport | MalformedLifetime | TokenWithOthers | MalformedEvenPort
            | BothFamilies | AdditionalNotIpv6 | MalformedPeer | TooManyPeers | MissingPeer | MalformedChannel
            | ChannelRange | ChannelTaken | PeerOnOtherChannel => ErrorCode::BAD_REQUEST,
            UnsupportedTransport => ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
            NoAllocation | AllocationExists => ErrorCode::ALLOCATION_MISMATCH,
            RelayDisabled | PeerDenied => ErrorCode::FORBIDDEN,
            WrongCredentials => ErrorCode::WRONG_CREDENTIALS,
            Draining | UnknownToken | EvenPortReservation | RelaySocket | PortsExhausted | TooManyPermissions => {
                ErrorCode::INSUFFICIENT_CAPACITY
            }
            UnknownFamily | NoRelayFamily => ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
            ServerQuota | UserQuota => ErrorCode::ALLOCATION_QUOTA_REACHED,
            RefreshFamily | PeerFamily => ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
        }
    }

    /// What the log line says.
    pub fn reason(self) -> &'static str {
        use Refusal::*;
        match self {
            MissingTransport => "missing REQUESTED-TRANSPORT",
            MalformedTransport => "malformed REQUESTED-TRANSPORT",
            UnsupportedTransport => "only UDP relays are offered",
            NoAllocation => "no allocation on this 5-tuple",
            AllocationExists => "5-tuple already has an allocation",
            RelayDisabled => "relay disabled: no credentials configured",
            WrongCredentials => "credentials differ from the allocation's",
            MalformedLifetime => "malformed LIFETIME",
            Draining => "draining: the server is shutting down",
            TokenWithOthers => "RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY",
            UnknownToken => "RESERVATION-TOKEN is not valid here",
            MalformedEvenPort => "malformed EVEN-PORT",
            EvenPortReservation => {
                "EVEN-PORT with port reservation is not offered (coturn's turnutils_uclient: add -c)"
            }
            BothFamilies => "both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY",
            UnknownFamily => "unknown REQUESTED-ADDRESS-FAMILY",
            AdditionalNotIpv6 => "ADDITIONAL-ADDRESS-FAMILY must be IPv6",
            ServerQuota => "allocation quota reached for the server",
            UserQuota => "allocation quota reached for this user",
            NoRelayFamily => "no relay address of that family",
            RelaySocket => "cannot open a relay socket",
            PortsExhausted => "relay port range exhausted",
            RefreshFamily => "allocation has no relay of that family",
            PeerFamily => "peer family differs from the relay's",
            PeerDenied => "peer address is denied by policy",
            TooManyPermissions => "too many permissions on this allocation",
            MalformedPeer => "malformed XOR-PEER-ADDRESS",
            TooManyPeers => "too many XOR-PEER-ADDRESS attributes",
            MissingPeer => "missing XOR-PEER-ADDRESS",
            MalformedChannel => "missing or malformed CHANNEL-NUMBER",
            ChannelRange => "channel number out of range",
            ChannelTaken => "channel number is bound to another peer",
            PeerOnOtherChannel => "peer is bound to another channel",
        }
    }

    /// The config key that would change this answer, named in the log line.
    pub fn setting(self) -> Option<&'static str> {
        use Refusal::*;
        match self {
            RelayDisabled => Some("auth.users, auth.secrets or auth.users_file"),
            ServerQuota => Some("relay.max_allocations"),
            UserQuota => Some("relay.max_allocations_per_user"),
            NoRelayFamily => Some("relay.addresses"),
            PortsExhausted => Some("relay.ports"),
            PeerDenied => Some("peers.allow"),
            ChannelRange => Some("relay.legacy_channel_numbers"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_a_setting_changes_name_it() {
        assert_eq!(Refusal::ChannelRange.setting(), Some("relay.legacy_channel_numbers"));
        assert_eq!(Refusal::ChannelRange.code(), ErrorCode::BAD_REQUEST);
        assert_eq!(Refusal::UserQuota.setting(), Some("relay.max_allocations_per_user"));
        assert_eq!(Refusal::PeerDenied.code(), ErrorCode::FORBIDDEN);
        assert_eq!(Refusal::Draining.setting(), None);
    }
}

//! Why the engine refused a TURN request: one variant per cause, each with the STUN error code
//! the client gets, the reason the log line gives, and the setting that changes the answer.

use crate::proto::ErrorCode;

/// One table: each refusal with its error code, the reason the log gives, and the setting
/// that would change the answer.
macro_rules! refusals {
    ($($(#[$doc:meta])* $variant:ident => $code:ident, $reason:expr, $setting:expr;)*) => {
        /// A refused request. The code goes on the wire; the reason and the setting go only
        /// to the log.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Refusal {
            $($(#[$doc])* $variant,)*
        }

        impl Refusal {
            /// The error code the client receives.
            pub fn code(self) -> ErrorCode {
                match self { $(Refusal::$variant => ErrorCode::$code,)* }
            }

            /// What the log line says.
            pub fn reason(self) -> &'static str {
                match self { $(Refusal::$variant => $reason,)* }
            }

            /// The config key that would change this answer, named in the log line.
            pub fn setting(self) -> Option<&'static str> {
                match self { $(Refusal::$variant => $setting,)* }
            }
        }
    };
}

refusals! {
    /// An Allocate without REQUESTED-TRANSPORT.
    MissingTransport => BAD_REQUEST, "missing REQUESTED-TRANSPORT", None;
    /// REQUESTED-TRANSPORT of the wrong length.
    MalformedTransport => BAD_REQUEST, "malformed REQUESTED-TRANSPORT", None;
    /// A transport other than UDP or TCP.
    UnsupportedTransport => UNSUPPORTED_TRANSPORT_PROTOCOL, "only UDP and TCP relays are offered", None;
    /// A TCP allocation asked over UDP (RFC 6062 §5.1).
    TcpOverUdp => BAD_REQUEST, "a TCP allocation needs a TCP or TLS control connection", None;
    /// A TCP allocation with DONT-FRAGMENT, EVEN-PORT, RESERVATION-TOKEN or two families.
    TcpWithOthers => BAD_REQUEST, "TCP allocation with DONT-FRAGMENT, EVEN-PORT, RESERVATION-TOKEN or ADDITIONAL-ADDRESS-FAMILY", None;
    /// Connect on a UDP allocation.
    NotTcpAllocation => BAD_REQUEST, "Connect on an allocation that is not TCP", None;
    /// Connect to a peer without a permission.
    NoPermission => FORBIDDEN, "no permission for this peer", None;
    /// Connect to a peer this allocation already has a connection with.
    ConnectionExists => CONNECTION_ALREADY_EXISTS, "a connection to this peer already exists", None;
    /// The connection to the peer could not be started.
    ConnectionFailed => CONNECTION_TIMEOUT_OR_FAILURE, "connection to the peer failed", None;
    /// `relay.max_tcp_connections` data connections already.
    TcpConnectionQuota => ALLOCATION_QUOTA_REACHED, "too many TCP connections on this allocation", Some("relay.max_tcp_connections");
    /// ConnectionBind over UDP, or on a connection that has an allocation.
    BindNotHere => BAD_REQUEST, "ConnectionBind must come on a new TCP or TLS connection", None;
    /// ConnectionBind with an unknown, already bound or missing CONNECTION-ID.
    UnknownConnection => BAD_REQUEST, "unknown CONNECTION-ID", None;
    /// A request other than Allocate on a 5-tuple with no allocation.
    NoAllocation => ALLOCATION_MISMATCH, "no allocation on this 5-tuple", None;
    /// An Allocate on a 5-tuple that already has one (not a retransmission).
    AllocationExists => ALLOCATION_MISMATCH, "5-tuple already has an allocation", None;
    /// No users and no secrets: this server does not relay.
    RelayDisabled => FORBIDDEN, "relay disabled: no credentials configured", Some("auth.users, auth.secrets or auth.users_file");
    /// The request's user is not the allocation's.
    WrongCredentials => WRONG_CREDENTIALS, "credentials differ from the allocation's", None;
    /// LIFETIME that is not four bytes.
    MalformedLifetime => BAD_REQUEST, "malformed LIFETIME", None;
    /// Draining or full, and another node of the cluster can serve: 300 with ALTERNATE-SERVER.
    TryAlternate => TRY_ALTERNATE, "sent to another node of the cluster (this one is draining or full)", None;
    /// SIGTERM: new allocations are refused while open ones drain.
    Draining => INSUFFICIENT_CAPACITY, "draining: the server is shutting down", None;
    /// RESERVATION-TOKEN together with EVEN-PORT or REQUESTED-ADDRESS-FAMILY.
    TokenWithOthers => BAD_REQUEST, "RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY", None;
    /// A RESERVATION-TOKEN that is unknown, expired or already used.
    UnknownToken => INSUFFICIENT_CAPACITY, "RESERVATION-TOKEN is unknown or expired", None;
    /// A RESERVATION-TOKEN that is not eight bytes.
    MalformedToken => BAD_REQUEST, "malformed RESERVATION-TOKEN", None;
    /// An empty EVEN-PORT.
    MalformedEvenPort => BAD_REQUEST, "malformed EVEN-PORT", None;
    /// EVEN-PORT with the R bit on an allocation of two families.
    ReserveDual => BAD_REQUEST, "EVEN-PORT with R on a dual-stack allocation", None;
    /// As many ports are reserved as allocations are allowed.
    ReservationsFull => INSUFFICIENT_CAPACITY, "too many ports reserved", Some("relay.max_allocations");
    /// DONT-FRAGMENT on a platform that cannot set the DF bit.
    DontFragment => UNKNOWN_ATTRIBUTE, "DONT-FRAGMENT: this platform cannot set the DF bit", None;
    /// REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together.
    BothFamilies => BAD_REQUEST, "both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY", None;
    /// A REQUESTED-ADDRESS-FAMILY that is neither IPv4 nor IPv6.
    UnknownFamily => ADDRESS_FAMILY_NOT_SUPPORTED, "unknown REQUESTED-ADDRESS-FAMILY", None;
    /// An ADDITIONAL-ADDRESS-FAMILY other than IPv6.
    AdditionalNotIpv6 => BAD_REQUEST, "ADDITIONAL-ADDRESS-FAMILY must be IPv6", None;
    /// `relay.max_allocations` is reached.
    ServerQuota => ALLOCATION_QUOTA_REACHED, "allocation quota reached for the server", Some("relay.max_allocations");
    /// `relay.max_allocations_per_user` is reached for this user.
    UserQuota => ALLOCATION_QUOTA_REACHED, "allocation quota reached for this user", Some("relay.max_allocations_per_user");
    /// No relay address of the requested family.
    NoRelayFamily => ADDRESS_FAMILY_NOT_SUPPORTED, "no relay address of that family", Some("relay.addresses");
    /// The kernel refused a relay socket.
    RelaySocket => INSUFFICIENT_CAPACITY, "cannot open a relay socket", None;
    /// Every port of `relay.ports` is in use.
    PortsExhausted => INSUFFICIENT_CAPACITY, "relay port range exhausted", Some("relay.ports");
    /// A Refresh names a family the allocation has no relay of.
    RefreshFamily => PEER_ADDRESS_FAMILY_MISMATCH, "allocation has no relay of that family", None;
    /// The peer is of another family than the relay.
    PeerFamily => PEER_ADDRESS_FAMILY_MISMATCH, "peer family differs from the relay's", None;
    /// The peer is in the built-in deny list.
    PeerDenied => FORBIDDEN, "peer address is denied by policy", Some("peers.allow");
    /// The allocation holds as many permissions as it may.
    TooManyPermissions => INSUFFICIENT_CAPACITY, "too many permissions on this allocation", None;
    /// An XOR-PEER-ADDRESS that does not decode.
    MalformedPeer => BAD_REQUEST, "malformed XOR-PEER-ADDRESS", None;
    /// More XOR-PEER-ADDRESS attributes than one request may carry.
    TooManyPeers => BAD_REQUEST, "too many XOR-PEER-ADDRESS attributes", None;
    /// A CreatePermission with no XOR-PEER-ADDRESS.
    MissingPeer => BAD_REQUEST, "missing XOR-PEER-ADDRESS", None;
    /// CHANNEL-NUMBER missing or not four bytes.
    MalformedChannel => BAD_REQUEST, "missing or malformed CHANNEL-NUMBER", None;
    /// A channel number above RFC 8656's 0x4FFF.
    ChannelRange => BAD_REQUEST, "channel number out of range", Some("relay.legacy_channel_numbers");
    /// The channel number is bound to another peer.
    ChannelTaken => BAD_REQUEST, "channel number is bound to another peer", None;
    /// The peer is bound to another channel number.
    PeerOnOtherChannel => BAD_REQUEST, "peer is bound to another channel", None;
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

//! STUN/TURN error codes: one newtype, named constants and reason phrases from one table.

/// A STUN error code (300..=699).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($name:ident = $code:literal, $reason:literal;)*) => {
        impl ErrorCode {
            $(#[doc = $reason] pub const $name: ErrorCode = ErrorCode($code);)*

            /// The RFC's reason phrase for this code ("" for codes not in the table).
            pub fn reason(self) -> &'static str {
                match self.0 {
                    $($code => $reason,)*
                    _ => "",
                }
            }
        }
    };
}

codes! {
    TRY_ALTERNATE = 300, "Try Alternate";
    BAD_REQUEST = 400, "Bad Request";
    UNAUTHORIZED = 401, "Unauthorized";
    FORBIDDEN = 403, "Forbidden";
    UNKNOWN_ATTRIBUTE = 420, "Unknown Attribute";
    ALLOCATION_MISMATCH = 437, "Allocation Mismatch";
    STALE_NONCE = 438, "Stale Nonce";
    ADDRESS_FAMILY_NOT_SUPPORTED = 440, "Address Family not Supported";
    WRONG_CREDENTIALS = 441, "Wrong Credentials";
    UNSUPPORTED_TRANSPORT_PROTOCOL = 442, "Unsupported Transport Protocol";
    PEER_ADDRESS_FAMILY_MISMATCH = 443, "Peer Address Family Mismatch";
    CONNECTION_ALREADY_EXISTS = 446, "Connection Already Exists";
    CONNECTION_TIMEOUT_OR_FAILURE = 447, "Connection Timeout or Failure";
    ALLOCATION_QUOTA_REACHED = 486, "Allocation Quota Reached";
    SERVER_ERROR = 500, "Server Error";
    INSUFFICIENT_CAPACITY = 508, "Insufficient Capacity";
}

impl ErrorCode {
    /// The hundreds digit, as carried in the ERROR-CODE attribute's class field.
    pub fn class(self) -> u8 {
        (self.0 / 100) as u8
    }

    /// The last two digits, as carried in the ERROR-CODE attribute's number field.
    pub fn number(self) -> u8 {
        (self.0 % 100) as u8
    }
}

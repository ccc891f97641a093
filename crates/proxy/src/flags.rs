//! Response flags in the style of Envoy's `%RESPONSE_FLAGS%`: why a request ended the way it
//! did, in a few letters, for access logs and (later) metrics labels.

use std::fmt;

/// A set of response flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $code:literal, $doc:literal;)*) => {
        impl Flags {
            $(
                #[doc = $doc]
                pub const $name: Flags = Flags(1 << $bit);
            )*
            const ALL: &'static [(Flags, &'static str)] = &[$((Flags::$name, $code)),*];
        }
    };
}

flags! {
    NO_ROUTE = 0, "NR", "No route (or listener) matched; or the rule cannot be served.";
    NO_HEALTHY_UPSTREAM = 1, "UH", "No endpoint could take the request (none ready, or all ejected).";
    UPSTREAM_CONNECT_FAILURE = 2, "UF", "Connecting to the endpoint failed.";
    UPSTREAM_OVERFLOW = 3, "UO", "A circuit breaker (connection, pending or request limit) refused it.";
    UPSTREAM_RESET = 4, "UC", "The endpoint closed or reset before a complete response.";
    UPSTREAM_TIMEOUT = 5, "UT", "A request or per-try timeout fired.";
    RETRY_LIMIT = 6, "URX", "Retries were exhausted (attempts or budget).";
    DOWNSTREAM_DISCONNECT = 7, "DC", "The client went away.";
    DELAY_INJECTED = 8, "DI", "A fault delay was injected.";
    FAULT_INJECTED = 9, "FI", "A fault abort answered.";
    REPLAY_OVERFLOW = 10, "RBX", "A retry was wanted but the body outgrew the replay buffer.";
    INVALID_BACKEND = 11, "IB", "The backend reference is invalid (500).";
}

impl Flags {
    /// No flag.
    pub const NONE: Flags = Flags(0);

    /// Adds flags.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// True when no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, code) in Flags::ALL {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        assert_eq!(Flags::NONE.to_string(), "-");
        assert_eq!((Flags::RETRY_LIMIT | Flags::UPSTREAM_CONNECT_FAILURE).to_string(), "UF,URX");
    }
}

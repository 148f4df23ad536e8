//! Client for the `hearth-guest` HTTP/JSON protocol.

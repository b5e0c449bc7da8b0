//! SPDY/3.1 frames for the client side. The client compiles the very source file crid's
//! streaming server uses, so the two ends share one implementation of the wire format (frames,
//! bounded sizes, zlib header blocks with the SPDY/3 dictionary) and cannot drift apart; the
//! protocol logic on top of it (streams, channels, status) is written separately on each side.

// The server-side helpers (RST codes, header lookup) are unused by the client.
#[allow(dead_code)]
#[path = "../../../crid/src/streaming/spdy.rs"]
mod shared;

pub use shared::*;

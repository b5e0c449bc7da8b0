//! Single-use tokens that carry a CRI streaming request from the gRPC call to the HTTP request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

use super::StreamError;
use super::backend::{AttachSpec, ExecSpec};

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(ExecSpec),
    Attach(AttachSpec),
    PortForward { pod_id: String, ports: Vec<u16> },
}

impl Request {
    /// The URL path segment of this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }
}

/// Outstanding requests by token. Tokens expire after `ttl`, are consumed by their first use
/// and at most `cap` may be outstanding.
pub struct TokenCache {
    ttl: Duration,
    cap: usize,
    entries: Mutex<HashMap<String, (Instant, Request)>>,
}

impl TokenCache {
    pub fn new(ttl: Duration, cap: usize) -> TokenCache {
        TokenCache {
            ttl,
            cap,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores a request and returns its new token (32 random bytes, URL-safe).
    pub fn insert(&self, request: Request) -> Result<String, StreamError> {
        let mut bytes = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut entries = self.entries.lock().map_err(|_| StreamError::Poisoned)?;
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= self.cap {
            return Err(StreamError::TooManyRequests { cap: self.cap });
        }
        entries.insert(token.clone(), (now + self.ttl, request));
        Ok(token)
    }

    /// Takes the request of `token` if it exists, has not expired and is of `kind`. A token is
    /// gone after this call whatever the answer.
    pub fn take(&self, token: &str, kind: &str) -> Option<Request> {
        let mut entries = self.entries.lock().ok()?;
        let (expires, request) = entries.remove(token)?;
        (expires > Instant::now() && request.kind() == kind).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Request {
        Request::PortForward {
            pod_id: "p".into(),
            ports: vec![80],
        }
    }

    #[test]
    fn a_token_works_once() {
        let c = TokenCache::new(Duration::from_secs(60), 10);
        let t = c.insert(pf()).unwrap();
        assert_eq!(t.len(), 48);
        assert_eq!(c.take(&t, "portforward"), Some(pf()));
        assert_eq!(c.take(&t, "portforward"), None);
        assert_eq!(c.take("nope", "portforward"), None);
    }

    #[test]
    fn a_token_of_another_kind_is_refused_and_spent() {
        let c = TokenCache::new(Duration::from_secs(60), 10);
        let t = c.insert(pf()).unwrap();
        assert_eq!(c.take(&t, "exec"), None);
        assert_eq!(c.take(&t, "portforward"), None);
    }

    #[test]
    fn expired_tokens_are_refused_and_free_their_slot() {
        let c = TokenCache::new(Duration::ZERO, 1);
        let t = c.insert(pf()).unwrap();
        assert_eq!(c.take(&t, "portforward"), None);
        c.insert(pf()).unwrap();
        c.insert(pf()).unwrap();
    }

    #[test]
    fn outstanding_tokens_are_capped() {
        let c = TokenCache::new(Duration::from_secs(60), 2);
        c.insert(pf()).unwrap();
        let t = c.insert(pf()).unwrap();
        assert!(matches!(
            c.insert(pf()),
            Err(StreamError::TooManyRequests { cap: 2 })
        ));
        c.take(&t, "portforward");
        c.insert(pf()).unwrap();
    }
}

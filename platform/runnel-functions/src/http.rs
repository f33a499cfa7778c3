//! Outgoing HTTP of connectors (`wasi:http/outgoing-handler`): only to the hosts on the
//! connector's allow-list, the whole exchange (connecting, sending, the response and its
//! body) bounded by the deadline of the call making it, every response body by a size
//! limit. A refused request fails in the guest with `HTTP-request-denied` and is
//! recorded, for the connector's log and `describe`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The largest response body a connector may read, unless configured otherwise.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Where a connector may send HTTP requests, and the bounds on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpAccess {
    /// `host`, `host:port`, or `*.domain` (any subdomain); empty: no outgoing HTTP.
    pub allow_hosts: Vec<String>,
    /// How long a request may take when no call deadline is set.
    pub timeout: Duration,
    pub max_response_bytes: usize,
}

impl HttpAccess {
    /// No outgoing HTTP at all.
    pub fn none() -> HttpAccess {
        HttpAccess {
            allow_hosts: Vec::new(),
            timeout: Duration::from_secs(1),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Whether `host` (and `port`) is on the allow-list.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.iter().any(|entry| {
            let entry = entry.trim_end_matches('.').to_ascii_lowercase();
            let (pattern, wanted_port) = match entry.rsplit_once(':') {
                Some((name, port_text)) if !name.contains(':') || name.ends_with(']') => {
                    match port_text.parse::<u16>() {
                        Ok(wanted) => (name.to_string(), Some(wanted)),
                        Err(_) => return false,
                    }
                }
                _ => (entry.clone(), None),
            };
            let pattern = pattern.trim_start_matches('[').trim_end_matches(']');
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name_matches = match pattern.strip_prefix("*.") {
                Some(domain) => host.len() > domain.len() && host.ends_with(&format!(".{domain}")),
                None => host == pattern,
            };
            name_matches && wanted_port.is_none_or(|p| p == port)
        })
    }
}

/// The hooks of one instance: the policy, and the requests it refused since last taken.
pub(crate) struct HttpHooks {
    pub access: HttpAccess,
    pub refused: Vec<String>,
    /// When the current call ends: every request it makes must be done by then.
    pub deadline: Option<Instant>,
}

impl HttpHooks {
    fn options(&self, asked: Option<RequestOptions>, remaining: Duration) -> RequestOptions {
        let cap = |wanted: Option<Duration>| Some(wanted.map_or(remaining, |w| w.min(remaining)));
        let asked = asked.unwrap_or_default();
        RequestOptions {
            connect_timeout: cap(asked.connect_timeout),
            first_byte_timeout: cap(asked.first_byte_timeout),
            between_bytes_timeout: cap(asked.between_bytes_timeout),
        }
    }
}

type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), Error>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        drop(fut);
        let uri = request.uri();
        let secure = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        if !self.access.allows(&host, port) {
            let refusal = format!(
                "refused outgoing HTTP to {host}:{port}: not on the connector's allow-list ({})",
                if self.access.allow_hosts.is_empty() {
                    "empty".to_string()
                } else {
                    self.access.allow_hosts.join(", ")
                }
            );
            self.refused.push(refusal);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + self.access.timeout);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Box::new(async { Err(Error::ConnectionTimeout) });
        }
        let options = self.options(options, remaining);
        let limit = self.access.max_response_bytes;
        Box::new(async move {
            let deadline = tokio::time::Instant::from_std(deadline);
            let sent = tokio::time::timeout_at(
                deadline,
                wasmtime_wasi_http::default_send_request(request, Some(options)),
            )
            .await;
            let (response, io) = sent.map_err(|_| Error::HttpResponseTimeout)??;
            let response = response.map(|body| {
                let limited = http_body_util::Limited::new(body, limit)
                    .map_err(move |error| match error.downcast::<Error>() {
                        Ok(error) => *error,
                        Err(_) => Error::HttpResponseBodySize(Some(limit as u64)),
                    })
                    .boxed_unsync();
                Deadline {
                    body: limited,
                    expiry: Box::pin(tokio::time::sleep_until(deadline)),
                }
                .boxed_unsync()
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// A response body that fails once the call's deadline has passed.
struct Deadline {
    body: WasiBody,
    expiry: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.expiry.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(hosts: &[&str]) -> HttpAccess {
        HttpAccess {
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..HttpAccess::none()
        }
    }

    #[test]
    fn the_allow_list_matches_hosts_ports_and_subdomains() {
        let list = access(&["api.example.com", "127.0.0.1:8080", "*.internal"]);
        assert!(list.allows("api.example.com", 443));
        assert!(list.allows("API.example.com.", 80));
        assert!(!list.allows("example.com", 443));
        assert!(!list.allows("evil-api.example.com", 443));
        assert!(list.allows("127.0.0.1", 8080));
        assert!(!list.allows("127.0.0.1", 8081));
        assert!(list.allows("db.internal", 80));
        assert!(!list.allows("internal", 80));
        assert!(!access(&[]).allows("127.0.0.1", 80));
        assert!(access(&["[::1]:9000"]).allows("[::1]", 9000));
        assert!(access(&["api.example.com."]).allows("api.example.com", 443));
    }
}

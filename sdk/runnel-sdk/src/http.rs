//! Outgoing HTTP for connectors, blocking, on `wasi:http/outgoing-handler`.
//!
//! The host sends a request only to a host on the connector's allow-list
//! (`runnel connector create --allow-host`); any other fails with an error saying so.
//! Every wait is bounded by the connector's call timeout, and a response body by the
//! host's size limit.
//!
//! ```ignore
//! let response = runnel_sdk::http::get("http://127.0.0.1:8080/items")?;
//! if response.status != 200 { /* … */ }
//! ```

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

use crate::Error;

/// The most bytes written to the request body in one call.
const WRITE_CHUNK: usize = 4096;
/// The most bytes read from the response body in one call.
const READ_CHUNK: u64 = 64 << 10;

/// A response, its body read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first value of header `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }
}

pub fn get(url: &str) -> Result<Response, Error> {
    send::<&str, &str>("GET", url, &[], None)
}

/// POSTs `body` with the content type given.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Response, Error> {
    send("POST", url, &[("content-type", content_type)], Some(body))
}

/// Sends a request and reads its response. `url` is `http://` or `https://`, a host, an
/// optional port, and a path with an optional query.
pub fn send<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    url: &str,
    headers: &[(K, V)],
    body: Option<&[u8]>,
) -> Result<Response, Error> {
    let target = Url::parse(url)?;
    let fields = Fields::new();
    if let Some(body) = body {
        // A length lets the request go out whole rather than chunked.
        fields
            .append("content-length", body.len().to_string().as_bytes())
            .map_err(|e| Error(format!("header content-length: {e:?}")))?;
    }
    for (name, value) in headers {
        let (name, value) = (name.as_ref(), value.as_ref());
        if body.is_some() && name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        fields
            .append(name, value.as_bytes())
            .map_err(|e| Error(format!("header {name}: {e:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let refused = |what: &str| Error(format!("{url}: the {what} is refused"));
    request.set_method(&method).map_err(|()| refused("method"))?;
    request
        .set_scheme(Some(&target.scheme))
        .map_err(|()| refused("scheme"))?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|()| refused("host"))?;
    request
        .set_path_with_query(Some(&target.path))
        .map_err(|()| refused("path"))?;
    let outgoing = request.body().map_err(|()| refused("body"))?;
    // The request goes out first; its body is streamed to it after.
    let pending = outgoing_handler::handle(request, None).map_err(|e| failed(url, &e))?;
    // A request that fails (refused, unreachable) closes its body stream: the response
    // then says why, so a write error is reported only if the response does not.
    let mut sending: Result<(), Error> = Ok(());
    if let Some(body) = body {
        let stream = outgoing.write().map_err(|()| refused("body"))?;
        for chunk in body.chunks(WRITE_CHUNK) {
            if let Err(error) = stream.blocking_write_and_flush(chunk) {
                sending = Err(Error(format!(
                    "{url}: sending the body: {}",
                    stream_error(error)
                )));
                break;
            }
        }
    }
    let finished = OutgoingBody::finish(outgoing, None);
    let response = loop {
        match pending.get() {
            Some(result) => break result,
            None => pending.subscribe().block(),
        }
    };
    let response = response
        .map_err(|()| Error(format!("{url}: the response was taken twice")))?
        .map_err(|e| failed(url, &e))?;
    sending?;
    finished.map_err(|e| failed(url, &e))?;
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| Error(format!("{url}: the response body was taken twice")))?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| Error(format!("{url}: the response body was taken twice")))?;
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(error) => {
                    return Err(Error(format!(
                        "{url}: reading the response: {}",
                        stream_error(error)
                    )));
                }
            }
        }
    }
    drop(IncomingBody::finish(incoming));
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The extra request headers of the connector's config: each `header.NAME=VALUE` entry.
#[cfg(any(feature = "source", feature = "sink"))]
pub fn config_headers() -> Vec<(String, String)> {
    crate::config::all()
        .into_iter()
        .filter_map(|(key, value)| Some((key.strip_prefix("header.")?.to_string(), value)))
        .collect()
}

fn failed(url: &str, code: &ErrorCode) -> Error {
    match code {
        ErrorCode::HttpRequestDenied => Error(format!(
            "{url}: the request was denied: its host is not on the connector's allow-list"
        )),
        other => Error(format!("{url}: {other:?}")),
    }
}

fn stream_error(error: StreamError) -> String {
    match error {
        StreamError::Closed => "the stream closed".to_string(),
        StreamError::LastOperationFailed(error) => error.to_debug_string(),
    }
}

/// The parts of a URL a request needs.
struct Url {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, Error> {
        // A fragment is never sent.
        let whole = url;
        let url = url.split('#').next().unwrap_or(url);
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            _ => return Err(Error(format!("{whole}: not an http:// or https:// URL"))),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) if rest.as_bytes()[at] == b'?' => (&rest[..at], format!("/{}", &rest[at..])),
            Some(at) => (&rest[..at], rest[at..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(Error(format!("{url}: no host")));
        }
        Ok(Url {
            scheme,
            authority: authority.to_string(),
            path,
        })
    }
}

/// `url` with `name=value` added to its query (both percent-encoded).
pub fn with_query(url: &str, name: &str, value: &str) -> String {
    let encode = |text: &str| {
        let mut encoded = String::new();
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                encoded.push(byte as char);
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
        encoded
    };
    let (url, fragment) = match url.split_once('#') {
        Some((url, fragment)) => (url, format!("#{fragment}")),
        None => (url, String::new()),
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{}={}{fragment}", encode(name), encode(value))
}

//! AWS Signature Version 4 for S3 requests (path-style, payload signed), with nothing but
//! SHA-256: small enough for a Wasm connector such as `plugins/object-store-sink`, and
//! built in the host workspace so its tests run with every other.
//!
//! ```
//! let signed = runnel_sigv4::sign(&runnel_sigv4::Request {
//!     method: "PUT",
//!     host: "127.0.0.1:9000",
//!     path: "/bucket/key.jsonl",
//!     query: "",
//!     payload: b"{}\n",
//!     region: "us-east-1",
//!     access_key: "AKIDEXAMPLE",
//!     secret_key: "secret",
//!     unix_seconds: 1_796_212_800,
//! });
//! assert!(signed.authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
//! ```

use sha2::{Digest, Sha256};

/// What is signed. `path` is the request path as sent, already URI-encoded with
/// [`encode_path`]; `query` the query as sent, made by [`encode_query`] (empty: none);
/// `host` the `Host` header (with the port if not the default).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub payload: &'a [u8],
    pub region: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a str,
    /// The signing time, seconds since the Unix epoch.
    pub unix_seconds: u64,
}

/// The headers to send with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub authorization: String,
    /// `x-amz-date`.
    pub date: String,
    /// `x-amz-content-sha256`.
    pub content_sha256: String,
}

const SIGNED_HEADERS: &str = "host;x-amz-content-sha256;x-amz-date";

pub fn sign(request: &Request<'_>) -> Signed {
    let date = amz_date(request.unix_seconds);
    let day = &date[..8];
    let content_sha256 = hex(&Sha256::digest(request.payload));
    let canonical = format!(
        "{}\n{}\n{}\nhost:{}\nx-amz-content-sha256:{}\nx-amz-date:{}\n\n{}\n{}",
        request.method,
        request.path,
        request.query,
        request.host,
        content_sha256,
        date,
        SIGNED_HEADERS,
        content_sha256
    );
    let scope = format!("{day}/{}/s3/aws4_request", request.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", request.secret_key).as_bytes(),
        day.as_bytes(),
    );
    for part in [request.region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    Signed {
        authorization: format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}",
            request.access_key
        ),
        date,
        content_sha256,
    }
}

/// `path` URI-encoded as S3 wants it: every byte but letters, digits, `-._~` and `/`
/// as `%XX`.
pub fn encode_path(path: &str) -> String {
    encode(path, b"-._~/")
}

/// A query string from unencoded names and values, in the canonical form signing needs
/// (each encoded, `/` too, sorted by name): send it as the request's query.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| (encode(name, b"-._~"), encode(value, b"-._~")))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[(byte >> 4) as usize] as char);
        text.push(DIGITS[(byte & 15) as usize] as char);
    }
    text
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds = unix_seconds % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn queries_are_encoded_and_sorted() {
        assert_eq!(
            encode_query(&[("prefix", "archive/a b"), ("list-type", "2")]),
            "list-type=2&prefix=archive%2Fa%20b"
        );
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_796_212_800), "20261202T120000Z");
    }

    /// The signature botocore's `S3SigV4Auth` computes for the same request, its URL's
    /// path as `encode_path` writes it (botocore 1.44, the payload signed as it does over
    /// plain HTTP).
    #[test]
    fn a_put_is_signed_as_botocore_signs_it() {
        let path = encode_path(
            "/my-bucket/topics/events/partition=0/00000000000000000000-00000000000000000002.jsonl",
        );
        assert!(path.contains("partition%3D0"));
        let signed = sign(&Request {
            method: "PUT",
            host: "127.0.0.1:9000",
            path: &path,
            query: "",
            payload: b"{\"a\":1}\n",
            region: "us-east-1",
            access_key: "AKIDEXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            unix_seconds: 1_796_212_800,
        });
        assert_eq!(signed.date, "20261202T120000Z");
        assert_eq!(
            signed.content_sha256,
            "e346432021b04179518d9614f3560ccd71354a4ee101ddcb893d6959a9d6301c"
        );
        assert_eq!(
            signed.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261202/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=531a64b0e12ebbed525ac1c180178390f8abc4c1639ec575d9f39665eccb4631"
        );
    }
}

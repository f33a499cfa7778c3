//! Frames and messages: the length-prefixed frames of the Kafka protocol, request decoding
//! and response encoding (with the `kafka-protocol` crate's message codecs).
//!
//! Everything here is pure (no I/O), so the fuzz targets drive exactly the code the server
//! runs. Nothing read from the network may panic or allocate more than the frame limit.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, VersionRange};

use crate::errors;
use crate::versions;

/// Kafka's `socket.request.max.bytes` default: 100 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds socket.request.max.bytes ({max})")]
    TooLarge { size: i64, max: usize },
    #[error("negative frame length {0}")]
    NegativeLength(i32),
}

/// Splits a byte stream into frames. Bytes go in with [`FrameDecoder::buffer`]; a frame's
/// length is checked against the limit before any room is reserved for it.
pub struct FrameDecoder {
    max: usize,
    buffer: BytesMut,
}

impl FrameDecoder {
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            max,
            buffer: BytesMut::with_capacity(8 << 10),
        }
    }

    /// Where the next bytes read from the connection go.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame (without its length prefix), `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(prefix) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let length = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let length = usize::try_from(length).map_err(|_| FrameError::NegativeLength(length))?;
        if length > self.max {
            return Err(FrameError::TooLarge {
                size: length as i64,
                max: self.max,
            });
        }
        if self.buffer.len() < 4 + length {
            // Room for the rest of this frame only; the limit was checked above.
            self.buffer.reserve(4 + length - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(4);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}

/// The fixed start of every request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    pub api_key: i16,
    pub version: i16,
    pub correlation_id: i32,
}

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request of {0} bytes is shorter than a request header")]
    TooShort(usize),
    /// The bytes are not a valid request of the key and version they claim.
    #[error("malformed {api} v{version} request: {reason}")]
    Malformed {
        api: String,
        version: i16,
        reason: String,
    },
}

/// Reads the api key, version and correlation id at the start of a request frame.
pub fn peek_request_id(frame: &[u8]) -> Result<RequestId, DecodeError> {
    let Some(start) = frame.get(..8) else {
        return Err(DecodeError::TooShort(frame.len()));
    };
    Ok(RequestId {
        api_key: i16::from_be_bytes([start[0], start[1]]),
        version: i16::from_be_bytes([start[2], start[3]]),
        correlation_id: i32::from_be_bytes([start[4], start[5], start[6], start[7]]),
    })
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub body: RequestKind,
}

impl Request {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
}

/// Decodes a request frame whose key and version are served (see
/// [`versions::is_served`]; callers check that first to answer UNSUPPORTED_VERSION).
pub fn decode_request(frame: Bytes) -> Result<Request, DecodeError> {
    let id = peek_request_id(&frame)?;
    let malformed = |reason: String| DecodeError::Malformed {
        api: format!("api key {}", id.api_key),
        version: id.version,
        reason,
    };
    if !versions::is_served(id.api_key, id.version) {
        return Err(malformed("not a served api key and version".to_string()));
    }
    let api_key =
        ApiKey::try_from(id.api_key).map_err(|_| malformed("unknown api key".to_string()))?;
    let malformed = |reason: String| DecodeError::Malformed {
        api: format!("{api_key:?}"),
        version: id.version,
        reason,
    };
    let mut bytes = frame;
    let header_version = api_key.request_header_version(id.version);
    let header = RequestHeader::decode(&mut bytes, header_version)
        .map_err(|e| malformed(format!("{e:#}")))?;
    let body = RequestKind::decode(api_key, &mut bytes, id.version)
        .map_err(|e| malformed(format!("{e:#}")))?;
    Ok(Request {
        header,
        api_key,
        body,
    })
}

/// Encodes a response frame (length prefix, header, body) for a request of `api_key` at
/// `version`. ApiVersions responses always carry a v0 header, whatever the version.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        body.header_version(version)
    };
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, header_version)?;
    body.encode(&mut out, version)?;
    let length = i32::try_from(out.len() - 4)
        .map_err(|_| anyhow::anyhow!("a response of {} bytes does not fit a frame", out.len()))?;
    out[..4].copy_from_slice(&length.to_be_bytes());
    Ok(out)
}

/// The answer to a request of an api key or version this broker does not serve: a
/// response header and the error code UNSUPPORTED_VERSION. For ApiVersions it is a full
/// v0 response listing what is served, so the client can pick a version and retry
/// (KIP-511).
pub fn unsupported_version_response(id: RequestId) -> BytesMut {
    if id.api_key == versions::API_VERSIONS {
        let body = ResponseKind::ApiVersions(
            api_versions_response().with_error_code(errors::UNSUPPORTED_VERSION),
        );
        if let Ok(frame) = encode_response(ApiKey::ApiVersions, 0, id.correlation_id, &body) {
            return frame;
        }
    }
    let mut out = BytesMut::with_capacity(10);
    out.put_i32(6);
    out.put_i32(id.correlation_id);
    out.put_i16(errors::UNSUPPORTED_VERSION);
    out
}

/// The ApiVersions answer: every served api key with its advertised range.
pub fn api_versions_response() -> ApiVersionsResponse {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    ApiVersionsResponse::default().with_api_keys(
        versions::SUPPORTED
            .iter()
            .map(|(key, min, max)| {
                ApiVersion::default()
                    .with_api_key(*key)
                    .with_min_version(*min)
                    .with_max_version(*max)
            })
            .collect(),
    )
}

/// The versions the codec can decode for `api` (those Kafka 4.x kept), for checking the
/// served table against.
pub fn codec_range(api: ApiKey) -> (i16, i16) {
    use kafka_protocol::messages::*;
    let range: VersionRange = match api {
        ApiKey::Produce => ProduceRequest::VERSIONS,
        ApiKey::Fetch => FetchRequest::VERSIONS,
        ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
        ApiKey::Metadata => MetadataRequest::VERSIONS,
        ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
        ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
        ApiKey::DeleteTopics => DeleteTopicsRequest::VERSIONS,
        ApiKey::DeleteRecords => DeleteRecordsRequest::VERSIONS,
        ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
        ApiKey::OffsetForLeaderEpoch => OffsetForLeaderEpochRequest::VERSIONS,
        ApiKey::DescribeConfigs => DescribeConfigsRequest::VERSIONS,
        ApiKey::AlterConfigs => AlterConfigsRequest::VERSIONS,
        ApiKey::CreatePartitions => CreatePartitionsRequest::VERSIONS,
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::VERSIONS,
        ApiKey::DescribeCluster => DescribeClusterRequest::VERSIONS,
        ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
        ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
        ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
        ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
        ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
        ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
        ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
        ApiKey::DescribeGroups => DescribeGroupsRequest::VERSIONS,
        ApiKey::ListGroups => ListGroupsRequest::VERSIONS,
        ApiKey::DeleteGroups => DeleteGroupsRequest::VERSIONS,
        ApiKey::OffsetDelete => OffsetDeleteRequest::VERSIONS,
        ApiKey::ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest::VERSIONS,
        ApiKey::ConsumerGroupDescribe => ConsumerGroupDescribeRequest::VERSIONS,
        _ => return (0, -1),
    };
    (range.min, range.max)
}

/// What the fuzz targets and the corpus replay run on one input: split it into frames
/// and decode every frame that claims a served key and version. Never panics.
pub fn decode_stream_for_fuzzing(input: &[u8]) -> usize {
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.buffer().extend_from_slice(input);
    let mut decoded = 0;
    while let Ok(Some(frame)) = decoder.next_frame() {
        if decode_one_for_fuzzing(frame) {
            decoded += 1;
        }
    }
    decoded
}

/// Decodes one request frame if it claims a served key and version; true if it decoded.
pub fn decode_one_for_fuzzing(frame: Bytes) -> bool {
    match peek_request_id(&frame) {
        Ok(id) if versions::is_served(id.api_key, id.version) => decode_request(frame).is_ok(),
        Ok(id) => {
            let _ = unsupported_version_response(id);
            false
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_and_oversized_ones_refused_before_reserving() {
        let mut decoder = FrameDecoder::new(16);
        decoder.buffer().extend_from_slice(&[0, 0, 0, 3, 1, 2]);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.buffer().extend_from_slice(&[3, 0, 0, 0, 1, 9]);
        assert_eq!(
            decoder.next_frame(),
            Ok(Some(Bytes::from_static(&[1, 2, 3])))
        );
        assert_eq!(decoder.next_frame(), Ok(Some(Bytes::from_static(&[9]))));
        assert_eq!(decoder.next_frame(), Ok(None));

        let mut decoder = FrameDecoder::new(16);
        decoder
            .buffer()
            .extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(decoder.buffer().capacity() < 1 << 20);
        let mut decoder = FrameDecoder::new(16);
        decoder.buffer().extend_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(decoder.next_frame(), Err(FrameError::NegativeLength(-5)));
    }

    #[test]
    fn an_api_versions_request_round_trips() {
        use kafka_protocol::messages::ApiVersionsRequest;
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(18)
            .with_request_api_version(3)
            .with_correlation_id(42)
            .encode(&mut frame, 2)
            .unwrap();
        ApiVersionsRequest::default().encode(&mut frame, 3).unwrap();
        let request = decode_request(frame.freeze()).unwrap();
        assert_eq!(request.api_key, ApiKey::ApiVersions);
        assert_eq!(request.header.correlation_id, 42);
        let response = encode_response(
            ApiKey::ApiVersions,
            3,
            42,
            &ResponseKind::ApiVersions(api_versions_response()),
        )
        .unwrap();
        assert_eq!(&response[4..8], &42i32.to_be_bytes());
    }

    #[test]
    fn unsupported_versions_and_unknown_keys_get_unsupported_version() {
        let id = RequestId {
            api_key: 1000,
            version: 0,
            correlation_id: 7,
        };
        let answer = unsupported_version_response(id);
        assert_eq!(&answer[..], &[0, 0, 0, 6, 0, 0, 0, 7, 0, 35]);
        let id = RequestId {
            api_key: versions::API_VERSIONS,
            version: 99,
            correlation_id: 8,
        };
        let mut answer = unsupported_version_response(id).freeze();
        answer.advance(8);
        let body = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
        assert_eq!(body.error_code, errors::UNSUPPORTED_VERSION);
        assert!(body.api_keys.iter().any(|k| k.api_key == versions::PRODUCE));
    }

    #[test]
    fn truncated_and_garbage_requests_are_errors() {
        assert_eq!(
            decode_request(Bytes::from_static(&[0, 3, 0])).unwrap_err(),
            DecodeError::TooShort(3)
        );
        // Metadata v1 with a topic array that runs past the end of the frame.
        let frame = Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 5, 0]);
        assert!(matches!(
            decode_request(frame),
            Err(DecodeError::Malformed { .. })
        ));
    }
}

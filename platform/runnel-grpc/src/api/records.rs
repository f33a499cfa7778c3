//! Records between the gRPC API's plain messages and the Kafka record batches the log
//! stores: one uncompressed batch per partition of a produce, and every record of the
//! stored batches (any codec) on the way out.

use bytes::BytesMut;
use runnel_log::batch::visit_records;
use runnel_log::{BatchBuilder, NewRecord};
use tonic::Status;

use super::pb;

/// The largest decompressed records section read back (as the log's own limit for a
/// batch the broker accepts).
const MAX_SECTION: usize = 64 << 20;

/// One record batch holding `records` (timestamps default to `now_ms`).
pub fn batch_of(records: &[&pb::Record], now_ms: i64) -> Result<BytesMut, Status> {
    let new: Vec<NewRecord> = records
        .iter()
        .map(|r| NewRecord {
            timestamp: r.timestamp_ms.unwrap_or(now_ms),
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| (h.key.clone(), Some(h.value.clone())))
                .collect(),
        })
        .collect();
    BatchBuilder::default()
        .build(&new)
        .map_err(|e| Status::invalid_argument(format!("cannot encode the records: {e}")))
}

/// The records of `batches` (whole stored batches) from offset `from`, at most
/// `max_records` of them (0: all), and the offset to read next.
pub fn records_of(
    topic: &str,
    partition: i32,
    batches: &[u8],
    from: u64,
    max_records: usize,
) -> Result<(Vec<pb::ConsumedRecord>, u64), Status> {
    let corrupt = |e: runnel_log::BatchError| {
        Status::data_loss(format!(
            "a stored batch of {topic}-{partition} cannot be read: {e}"
        ))
    };
    let mut out = Vec::new();
    let next = visit_records(batches, from, MAX_SECTION, |record| {
        if max_records > 0 && out.len() >= max_records {
            return false;
        }
        out.push(pb::ConsumedRecord {
            topic: topic.to_string(),
            partition,
            offset: record.offset as i64,
            timestamp_ms: record.timestamp,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: record
                .headers
                .iter()
                .map(|(key, value)| pb::Header {
                    key: key.to_string(),
                    value: value.map(<[u8]>::to_vec).unwrap_or_default(),
                })
                .collect(),
        });
        true
    })
    .map_err(corrupt)?;
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_as_they_went_in() {
        let records = [
            pb::Record {
                key: Some(b"k".to_vec()),
                value: Some(b"v".to_vec()),
                headers: vec![pb::Header {
                    key: "h".into(),
                    value: b"x".to_vec(),
                }],
                timestamp_ms: Some(1_700_000_000_000),
            },
            pb::Record {
                key: None,
                value: None,
                headers: vec![],
                timestamp_ms: None,
            },
        ];
        let mut batch = batch_of(&records.iter().collect::<Vec<_>>(), 42).unwrap();
        runnel_log::batch::stamp_offsets(&mut batch, 10, 0);
        let (read, next) = records_of("t", 3, &batch, 10, 0).unwrap();
        assert_eq!(next, 12);
        assert_eq!(read.len(), 2);
        assert_eq!(
            (read[0].offset, read[0].timestamp_ms, read[0].partition),
            (10, 1_700_000_000_000, 3)
        );
        assert_eq!(read[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(read[0].headers[0].value, b"x");
        assert_eq!((read[1].offset, read[1].timestamp_ms), (11, 42));
        assert_eq!((read[1].key.clone(), read[1].value.clone()), (None, None));
        // From the middle, and limited.
        let (read, next) = records_of("t", 3, &batch, 11, 1).unwrap();
        assert_eq!((read.len(), read[0].offset, next), (1, 11, 12));
        let (read, next) = records_of("t", 3, &batch, 10, 1).unwrap();
        assert_eq!((read.len(), next), (1, 11));
    }
}

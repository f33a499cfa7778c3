//! A segment's record batches as one Parquet file (read back by [`crate::rebuild`]).
//!
//! One row per record, in offset order, with the columns of `schemas/parquet/README.md`:
//! what a data-lake reader wants (`offset`, `timestamp`, `key`, `value`, `headers`) and, on
//! every row, the fields of the batch it came from, so the batches can be rebuilt exactly:
//! the same offsets, timestamps, keys, values, headers, producer fields and attributes. A
//! rebuilt batch is uncompressed (the file is zstd-compressed as a whole instead), so a
//! compressed batch's bytes and CRC differ from the stored ones while everything a consumer
//! sees is equal. An uncompressed batch that a rebuild reproduces byte for byte (as clients
//! write them) keeps its CRC in `batch_crc`, which spares the rebuild computing it.
//!
//! Row groups hold about [`ROW_GROUP_ROWS`] records, ending on a batch boundary, and carry min/max statistics of every column
//! (the page index too), so a read from an offset skips the row groups before it.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use runnel_log::batch::{Records, batch_positions, rebuilds_identically, records_section};

use crate::TierError;

/// The version of the row layout, stored in the file's key-value metadata.
pub const SCHEMA_VERSION: &str = "1";
/// The metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "runnel.schema.version";
/// Records per row group: the unit a read from an offset skips or decodes.
pub const ROW_GROUP_ROWS: usize = 16 * 1024;
/// Data pages are closed at about this many (uncompressed) bytes: a cold read decompresses
/// a page and copies its values out while the page is still in the core's cache.
pub const PAGE_BYTES: usize = 128 << 10;
/// Rows written between checks of a page's size.
const PAGE_ROWS_CHECKED: usize = 64;
/// The largest records section decompressed from one stored batch.
const MAX_SECTION: usize = 256 << 20;

/// What [`encode`] made of a segment.
#[derive(Debug, Clone)]
pub struct EncodedSegment {
    pub parquet: Bytes,
    pub records: u64,
    /// The first and last record offsets (`None` without records).
    pub offsets: Option<(u64, u64)>,
    pub max_timestamp: i64,
}

/// The Arrow schema of a segment file.
pub fn schema() -> SchemaRef {
    let header = Field::new("item", DataType::Struct(header_fields()), false);
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string());
    Arc::new(
        Schema::new(vec![
            Field::new("offset", DataType::Int64, false),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("key", DataType::Binary, true),
            Field::new("value", DataType::Binary, true),
            Field::new("headers", DataType::List(Arc::new(header)), false),
            Field::new("timestamp_delta", DataType::Int64, false),
            Field::new("batch_base_offset", DataType::Int64, false),
            Field::new("batch_last_offset_delta", DataType::Int32, false),
            Field::new("batch_base_timestamp", DataType::Int64, false),
            Field::new("batch_max_timestamp", DataType::Int64, false),
            Field::new("batch_leader_epoch", DataType::Int32, false),
            Field::new("batch_attributes", DataType::Int16, false),
            Field::new("producer_id", DataType::Int64, false),
            Field::new("producer_epoch", DataType::Int16, false),
            Field::new("base_sequence", DataType::Int32, false),
            Field::new("batch_crc", DataType::Int64, true),
        ])
        .with_metadata(metadata),
    )
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// Columns being filled, one row per record.
struct Columns {
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: BinaryBuilder,
    value: BinaryBuilder,
    header_offsets: Vec<i32>,
    header_keys: StringBuilder,
    header_values: BinaryBuilder,
    timestamp_delta: Int64Builder,
    base_offset: Int64Builder,
    last_offset_delta: Int32Builder,
    base_timestamp: Int64Builder,
    max_timestamp: Int64Builder,
    leader_epoch: Int32Builder,
    attributes: Int16Builder,
    producer_id: Int64Builder,
    producer_epoch: Int16Builder,
    base_sequence: Int32Builder,
    batch_crc: Int64Builder,
    rows: usize,
}

impl Columns {
    fn new() -> Columns {
        Columns {
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new(),
            key: BinaryBuilder::new(),
            value: BinaryBuilder::new(),
            // Offsets into the header columns: one more than there are rows, from 0.
            header_offsets: vec![0],
            header_keys: StringBuilder::new(),
            header_values: BinaryBuilder::new(),
            timestamp_delta: Int64Builder::new(),
            base_offset: Int64Builder::new(),
            last_offset_delta: Int32Builder::new(),
            base_timestamp: Int64Builder::new(),
            max_timestamp: Int64Builder::new(),
            leader_epoch: Int32Builder::new(),
            attributes: Int16Builder::new(),
            producer_id: Int64Builder::new(),
            producer_epoch: Int16Builder::new(),
            base_sequence: Int32Builder::new(),
            batch_crc: Int64Builder::new(),
            rows: 0,
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, TierError> {
        let header_offsets = std::mem::replace(&mut self.header_offsets, vec![0]);
        let headers = StructArray::try_new(
            header_fields(),
            vec![
                Arc::new(self.header_keys.finish()) as ArrayRef,
                Arc::new(self.header_values.finish()),
            ],
            None,
        )?;
        let DataType::List(item) = schema.field_with_name("headers")?.data_type().clone() else {
            return Err(TierError::Format("the headers column is not a list".into()));
        };
        let headers = ListArray::try_new(
            item,
            OffsetBuffer::new(ScalarBuffer::from(header_offsets)),
            Arc::new(headers),
            None,
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish().with_timezone("UTC")),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(headers),
            Arc::new(self.timestamp_delta.finish()),
            Arc::new(self.base_offset.finish()),
            Arc::new(self.last_offset_delta.finish()),
            Arc::new(self.base_timestamp.finish()),
            Arc::new(self.max_timestamp.finish()),
            Arc::new(self.leader_epoch.finish()),
            Arc::new(self.attributes.finish()),
            Arc::new(self.producer_id.finish()),
            Arc::new(self.producer_epoch.finish()),
            Arc::new(self.base_sequence.finish()),
            Arc::new(self.batch_crc.finish()),
        ];
        self.rows = 0;
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// Encodes `batches` (whole batches as the log stores them, in offset order) as one
/// Parquet file. Control batches are kept like any other (their attributes say what they
/// are).
pub fn encode(batches: &[u8]) -> Result<EncodedSegment, TierError> {
    let schema = schema();
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Row groups are closed by hand, on batch boundaries.
        .set_max_row_group_row_count(None)
        // Values rarely repeat: a dictionary only costs time before it falls back.
        .set_column_dictionary_enabled(ColumnPath::from("value"), false)
        .set_data_page_size_limit(PAGE_BYTES)
        .set_write_batch_size(PAGE_ROWS_CHECKED)
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties))?;
    let mut columns = Columns::new();
    let mut records = 0u64;
    let mut offsets: Option<(u64, u64)> = None;
    let mut max_timestamp = i64::MIN;
    let mut end = 0usize;
    for (position, header) in batch_positions(batches) {
        let len = header.total_len() as usize;
        let bytes = &batches[position..position + len];
        end = position + len;
        let section = records_section(bytes, MAX_SECTION)?;
        // The CRC a rebuild of this batch will have, where it is this one's.
        let known_crc = rebuilds_identically(bytes)?.then_some(i64::from(header.crc));
        let first_row = columns.rows;
        for record in Records::new(&section, header.records_count) {
            let record = record?;
            let offset = header.base_offset + i64::from(record.offset_delta);
            let timestamp = if header.is_log_append_time() {
                header.max_timestamp
            } else {
                header.base_timestamp.wrapping_add(record.timestamp_delta)
            };
            max_timestamp = max_timestamp.max(timestamp);
            let offset_u = offset.max(0) as u64;
            offsets = Some(offsets.map_or((offset_u, offset_u), |(first, _)| (first, offset_u)));
            columns.offset.append_value(offset);
            columns.timestamp.append_value(timestamp);
            columns.key.append_option(record.key);
            columns.value.append_option(record.value);
            let mut header_count = columns.header_offsets.last().copied().unwrap_or(0);
            for (key, value) in record.header_entries()? {
                columns.header_keys.append_value(key);
                columns.header_values.append_option(value);
                header_count += 1;
            }
            columns.header_offsets.push(header_count);
            columns.timestamp_delta.append_value(record.timestamp_delta);
            columns.base_offset.append_value(header.base_offset);
            columns
                .last_offset_delta
                .append_value(header.last_offset_delta);
            columns.base_timestamp.append_value(header.base_timestamp);
            columns.max_timestamp.append_value(header.max_timestamp);
            columns
                .leader_epoch
                .append_value(header.partition_leader_epoch);
            columns.attributes.append_value(header.attributes);
            columns.producer_id.append_value(header.producer_id);
            columns.producer_epoch.append_value(header.producer_epoch);
            columns.base_sequence.append_value(header.base_sequence);
            columns.rows += 1;
            records += 1;
        }
        for _ in first_row..columns.rows {
            columns.batch_crc.append_option(known_crc);
        }
        // A row group ends after a whole batch, so each rebuilds into whole batches.
        if columns.rows >= ROW_GROUP_ROWS {
            writer.write(&columns.finish(&schema)?)?;
            writer.flush()?;
        }
    }
    if end != batches.len() {
        return Err(TierError::Format(format!(
            "the segment's bytes end in an incomplete batch at byte {end} of {}",
            batches.len()
        )));
    }
    if columns.rows > 0 {
        writer.write(&columns.finish(&schema)?)?;
    }
    let parquet = writer.into_inner()?;
    Ok(EncodedSegment {
        parquet: Bytes::from(parquet),
        records,
        offsets,
        max_timestamp,
    })
}

pub(crate) fn check_schema(schema: &SchemaRef) -> Result<(), TierError> {
    match schema.metadata().get(SCHEMA_VERSION_KEY) {
        Some(version) if version == SCHEMA_VERSION => Ok(()),
        Some(version) => Err(TierError::Format(format!(
            "the file has row layout version {version}; this build reads version {SCHEMA_VERSION}"
        ))),
        None => Err(TierError::Format(format!(
            "the file has no `{SCHEMA_VERSION_KEY}`: not a Runnel segment file"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebuild::decode;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use runnel_log::batch::{BatchHeader, StoredRecord, stamp_offsets, visit_records};
    use runnel_log::{BatchBuilder, NewRecord};

    /// Batches as a log stores them: `sizes[i]` records in batch i, offsets stamped from
    /// 0, odd batches zstd-compressed and with a producer id.
    fn stored(sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0i64;
        for (index, &count) in sizes.iter().enumerate() {
            let records: Vec<NewRecord> = (0..count)
                .map(|i| {
                    let n = offset as usize + i;
                    NewRecord {
                        timestamp: 1_700_000_000_000 + n as i64 * 3,
                        key: (!n.is_multiple_of(5)).then(|| format!("key-{n}").into_bytes()),
                        value: (n % 7 != 3).then(|| vec![n as u8; n % 50]),
                        headers: (0..n % 3)
                            .map(|h| (format!("h{h}"), (h != 1).then(|| vec![h as u8; 2])))
                            .collect(),
                    }
                })
                .collect();
            let builder = if index % 2 == 1 {
                BatchBuilder {
                    compression: runnel_log::Compression::Zstd,
                    producer_id: 42,
                    producer_epoch: 3,
                    base_sequence: offset as i32,
                }
            } else {
                BatchBuilder::default()
            };
            let mut batch = builder.build(&records).unwrap();
            stamp_offsets(&mut batch, offset, 7);
            out.extend_from_slice(&batch);
            offset += count as i64;
        }
        out
    }

    type Owned = (
        u64,
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn records_of(batches: &[u8], from: u64) -> Vec<Owned> {
        let mut records = Vec::new();
        visit_records(batches, from, 1 << 30, |r: StoredRecord<'_>| {
            records.push((
                r.offset,
                r.timestamp,
                r.key.map(<[u8]>::to_vec),
                r.value.map(<[u8]>::to_vec),
                r.headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                    .collect(),
            ));
            true
        })
        .unwrap();
        records
    }

    fn headers_of(batches: &[u8]) -> Vec<BatchHeader> {
        batch_positions(batches).map(|(_, h)| h).collect()
    }

    #[test]
    fn a_segment_rebuilds_to_the_same_records_and_batch_fields() {
        let original = stored(&[1, 10, 300, 2, 47]);
        let encoded = encode(&original).unwrap();
        assert_eq!(encoded.records, 360);
        assert_eq!(encoded.offsets, Some((0, 359)));
        let rebuilt = decode(encoded.parquet.clone(), 0, usize::MAX).unwrap();
        assert_eq!(records_of(&rebuilt, 0), records_of(&original, 0));
        for (position, header) in batch_positions(&rebuilt) {
            let batch = &rebuilt[position..position + header.total_len() as usize];
            runnel_log::batch::validate_produced(batch, 1 << 20, false).unwrap();
        }
        for (before, after) in headers_of(&original).iter().zip(headers_of(&rebuilt)) {
            assert_eq!(after.base_offset, before.base_offset);
            assert_eq!(after.last_offset_delta, before.last_offset_delta);
            assert_eq!(after.base_timestamp, before.base_timestamp);
            assert_eq!(after.max_timestamp, before.max_timestamp);
            assert_eq!(after.partition_leader_epoch, before.partition_leader_epoch);
            assert_eq!(after.producer_id, before.producer_id);
            assert_eq!(after.producer_epoch, before.producer_epoch);
            assert_eq!(after.base_sequence, before.base_sequence);
            assert_eq!(after.records_count, before.records_count);
            assert_eq!(after.attributes & !0x07, before.attributes & !0x07);
            assert_eq!(after.compression().unwrap(), runnel_log::Compression::None);
        }
        assert_eq!(headers_of(&rebuilt).len(), 5);

        // The uncompressed batches (the even ones) keep their CRC in `batch_crc` and are
        // rebuilt byte for byte; the compressed ones have none there.
        let originals: Vec<&[u8]> = batch_positions(&original)
            .map(|(position, header)| &original[position..position + header.total_len() as usize])
            .collect();
        let rebuilds: Vec<&[u8]> = batch_positions(&rebuilt)
            .map(|(position, header)| &rebuilt[position..position + header.total_len() as usize])
            .collect();
        for (index, (before, after)) in originals.iter().zip(&rebuilds).enumerate() {
            assert_eq!(index % 2 == 0, before == after, "batch {index}");
        }
        let table = ParquetRecordBatchReaderBuilder::try_new(encoded.parquet)
            .unwrap()
            .build()
            .unwrap()
            .map(|batch| batch.unwrap())
            .collect::<Vec<_>>();
        let known: usize = table
            .iter()
            .map(|batch| {
                let column = batch.column_by_name("batch_crc").unwrap();
                column.len() - column.null_count()
            })
            .sum();
        assert_eq!(known, 1 + 300 + 47, "rows of uncompressed batches");
    }

    #[test]
    fn a_file_written_before_batch_crc_rebuilds_with_computed_crcs() {
        let original = stored(&[5, 20, 7]);
        let encoded = encode(&original).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(encoded.parquet)
            .unwrap()
            .build()
            .unwrap();
        let mut older: Option<ArrowWriter<Vec<u8>>> = None;
        for batch in reader {
            let mut batch = batch.unwrap();
            batch.remove_column(batch.schema().index_of("batch_crc").unwrap());
            let writer = older.get_or_insert_with(|| {
                let schema = Arc::new(
                    batch
                        .schema()
                        .as_ref()
                        .clone()
                        .with_metadata(schema().metadata().clone()),
                );
                ArrowWriter::try_new(Vec::new(), schema, None).unwrap()
            });
            writer.write(&batch).unwrap();
        }
        let older = Bytes::from(older.unwrap().into_inner().unwrap());
        let rebuilt = decode(older, 0, usize::MAX).unwrap();
        assert_eq!(records_of(&rebuilt, 0), records_of(&original, 0));
        for (position, header) in batch_positions(&rebuilt) {
            let batch = &rebuilt[position..position + header.total_len() as usize];
            runnel_log::batch::validate_produced(batch, 1 << 20, false).unwrap();
        }
    }

    #[test]
    fn a_read_from_an_offset_skips_row_groups_and_batches_before_it() {
        let sizes = vec![1000; 40];
        let original = stored(&sizes);
        let encoded = encode(&original).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(encoded.parquet.clone()).unwrap();
        let groups = builder.metadata().num_row_groups();
        assert_eq!(groups, 40_000usize.div_ceil(ROW_GROUP_ROWS));
        let rebuilt = decode(encoded.parquet, 35_500, usize::MAX).unwrap();
        // Whole batches: from the one holding 35,500.
        assert_eq!(headers_of(&rebuilt)[0].base_offset, 35_000);
        assert_eq!(records_of(&rebuilt, 35_500), records_of(&original, 35_500));
    }

    #[test]
    fn a_read_stops_after_about_max_bytes_of_whole_batches() {
        let original = stored(&[100; 10]);
        let encoded = encode(&original).unwrap();
        let one = decode(encoded.parquet.clone(), 0, 1).unwrap();
        assert_eq!(
            headers_of(&one).len(),
            1,
            "at least one batch, and no more past the limit"
        );
        let all = decode(encoded.parquet, 0, usize::MAX).unwrap();
        assert_eq!(headers_of(&all).len(), 10);
    }

    #[test]
    fn bytes_that_are_not_a_segment_file_are_refused() {
        assert!(decode(Bytes::from_static(b"not parquet at all"), 0, 1).is_err());
        let truncated = stored(&[3]);
        assert!(encode(&truncated[..truncated.len() - 1]).is_err());
    }

    #[test]
    fn values_are_plain_in_pages_of_about_page_bytes() {
        use parquet::basic::PageType;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let value = |n: usize| {
            let mut v = vec![(n % 251) as u8; 1000];
            v[..8].copy_from_slice(&n.to_le_bytes());
            v
        };
        let records: Vec<NewRecord> = (0..5000)
            .map(|n| NewRecord {
                timestamp: n as i64,
                key: Some(b"k".to_vec()),
                value: Some(value(n)),
                headers: vec![],
            })
            .collect();
        let mut batch = BatchBuilder::default().build(&records).unwrap();
        stamp_offsets(&mut batch, 0, 0);
        let encoded = encode(&batch).unwrap();
        let file = SerializedFileReader::new(encoded.parquet).unwrap();
        let group = file.get_row_group(0).unwrap();
        let column = (0..group.num_columns())
            .find(|&c| group.metadata().column(c).column_path().string() == "value")
            .unwrap();
        let pages: Vec<_> = group
            .get_column_page_reader(column)
            .unwrap()
            .map(|page| page.unwrap())
            .collect();
        assert!(
            pages
                .iter()
                .all(|page| page.page_type() == PageType::DATA_PAGE),
            "no dictionary page for values"
        );
        assert!(
            pages.len() >= 5_000_000 / PAGE_BYTES,
            "{} pages",
            pages.len()
        );
        let values: u32 = pages.iter().map(|page| page.num_values()).sum();
        assert_eq!(values, 5000);
        for page in &pages {
            assert!(
                (page.num_values() as usize) * 1004 <= PAGE_BYTES + PAGE_ROWS_CHECKED * 1004,
                "a page of {} values",
                page.num_values()
            );
        }
    }
}

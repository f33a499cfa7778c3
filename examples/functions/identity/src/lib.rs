//! Writes each record unchanged: key, value, headers and timestamp. The cost of a function
//! that does nothing, for `runnel-bench functions`.

use runnel_sdk::{Error, Output, Record};

#[runnel_sdk::transform]
fn identity(record: Record<'_>) -> Result<Option<Output>, Error> {
    Ok(Some(
        Output::from_record(&record).value(record.value.unwrap_or_default()),
    ))
}

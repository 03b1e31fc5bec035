//! Aggregate values of events: [`AggValue`] (kept with its encoding and the RocksDB
//! merge operator in [`crate::store::agg`], the layer that stores it) and the value one
//! event contributes under its lever's aggregation.

use crate::decimal::Amount;
use crate::registry::Aggregation;
pub use crate::store::agg::AggValue;

/// The part of [`AggValue`] that knows the levers' aggregations.
impl AggValue {
    /// The contribution of one event with `value` at `time_ms`.
    pub fn of_event(agg: Aggregation, value: Amount, time_ms: i64, ordinal: u64) -> AggValue {
        match agg {
            Aggregation::Sum => AggValue::Sum(value.0),
            Aggregation::Count => AggValue::Sum(crate::decimal::UNIT),
            Aggregation::Max => AggValue::Max(value.0),
            Aggregation::Latest => AggValue::Latest {
                time_ms,
                ordinal,
                value: value.0,
            },
        }
    }
}

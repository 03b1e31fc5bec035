//! RocksDB properties read for metrics: integer properties per column family and
//! summed, and the cumulative write-stall time.

use super::Store;

impl Store {
    /// Sum of a RocksDB integer property over every column family (for metrics).
    pub fn property_sum(&self, name: &str) -> u64 {
        Store::CFS
            .iter()
            .filter_map(|c| self.property_int(c, name))
            .sum()
    }

    /// Cumulative time RocksDB stalled user writes since the store was opened, in
    /// seconds (the "Cumulative stall" line of `rocksdb.dbstats`).
    pub fn write_stall_seconds(&self) -> Option<f64> {
        let text = self.db.property_value("rocksdb.dbstats").ok()??;
        parse_cumulative_stall(&text)
    }

    /// A RocksDB integer property of a column family (for metrics).
    pub fn property_int(&self, cf_name: &str, name: &str) -> Option<u64> {
        self.db
            .property_int_value_cf(self.cf(cf_name), name)
            .ok()
            .flatten()
    }
}

/// Parses `Cumulative stall: HH:MM:SS.sss H:M:S, ...` into seconds.
fn parse_cumulative_stall(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cumulative stall:"))?;
    let hms = line.split_whitespace().next()?;
    let mut parts = hms.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + sec)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cumulative_stall_is_parsed() {
        let text = "Uptime(secs): 1.0 total\nCumulative stall: 01:02:03.500 H:M:S, 0.0 percent\n";
        assert_eq!(parse_cumulative_stall(text), Some(3723.5));
        assert_eq!(parse_cumulative_stall("nothing"), None);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(store.write_stall_seconds(), Some(0.0));
    }
}

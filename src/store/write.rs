//! Writes: one batch, several batches as one atomic RocksDB write, the writability
//! probe and the WAL fsync.

use rocksdb::{WriteBatch, WriteOptions};

use super::{cf, Store, StoreError};

impl Store {
    /// Writes a batch; with `sync` the WAL is fsynced before returning.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(StoreError::classify)
    }

    /// Writes several batches as one RocksDB write (one WAL record, one `write(2)`),
    /// atomically: either every batch is applied or none is. With `sync` the WAL is
    /// fsynced before returning.
    pub fn write_all(&self, mut batches: Vec<WriteBatch>, sync: bool) -> Result<(), StoreError> {
        if batches.len() <= 1 {
            return match batches.pop() {
                Some(one) => self.write(one, sync),
                None => Ok(()),
            };
        }
        self.write(concat_batches(&batches), sync)
    }

    /// Checks that the store accepts writes: a tiny durable write (fsynced) to `meta`.
    /// Used to notice on its own that a full or failing disk is writable again.
    pub fn probe_writable(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(cf::META),
            b"probe",
            crate::window::now_ms().to_be_bytes(),
        );
        self.write(batch, true)
    }

    /// Fsyncs the write-ahead log (covering every earlier unsynced write).
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(StoreError::classify)
    }
}

/// Size of a RocksDB write batch's header: a fixed64 sequence number and a fixed32
/// record count, both little-endian, followed by the records (`db/write_batch.cc`:
/// `rep_ := sequence: fixed64, count: fixed32, data: record[count]`).
const BATCH_HEADER: usize = 12;

/// Concatenates write batches into one: the records of each, in order, under one header
/// whose count is the sum of theirs (what RocksDB's `WriteBatchInternal::Append` does).
/// One write batch holding the records of `batches`, in order (applying it is applying
/// them all, atomically).
pub fn concat_batches(batches: &[WriteBatch]) -> WriteBatch {
    let bytes: usize = batches
        .iter()
        .map(|b| b.data().len().saturating_sub(BATCH_HEADER))
        .sum();
    let mut rep = Vec::with_capacity(BATCH_HEADER + bytes);
    rep.extend_from_slice(&[0u8; BATCH_HEADER]);
    let mut count: u32 = 0;
    for b in batches {
        let data = b.data();
        if data.len() > BATCH_HEADER {
            rep.extend_from_slice(&data[BATCH_HEADER..]);
            count += u32::try_from(b.len()).expect("a write batch counts its records in 32 bits");
        }
    }
    rep[8..BATCH_HEADER].copy_from_slice(&count.to_le_bytes());
    WriteBatch::from_data(&rep)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn merged_batches_apply_every_record_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(3600)).unwrap();
        let mut batches = Vec::new();
        for i in 0..5u8 {
            let mut b = WriteBatch::default();
            // Later batches overwrite "shared": the last one must win, as in separate writes.
            b.put_cf(store.cf(cf::META), b"shared", [i]);
            for j in 0..=i {
                b.put_cf(store.cf(cf::ADMIN), [i, j], [j]);
            }
            if i == 3 {
                b.delete_cf(store.cf(cf::ADMIN), [1u8, 0]);
            }
            batches.push(b);
        }
        // An empty batch in the middle contributes nothing.
        batches.insert(2, WriteBatch::default());
        let records: usize = batches.iter().map(|b| b.len()).sum();
        assert_eq!(concat_batches(&batches).len(), records);
        let seq_before = store.db.latest_sequence_number();
        store.write_all(batches, true).unwrap();
        assert_eq!(store.get(cf::META, b"shared").unwrap(), Some(vec![4]));
        for i in 0..5u8 {
            for j in 0..=i {
                let want = if (i, j) == (1, 0) {
                    None
                } else {
                    Some(vec![j])
                };
                assert_eq!(store.get(cf::ADMIN, &[i, j]).unwrap(), want, "({i}, {j})");
            }
        }
        // The merged write consumed one sequence number per record, like separate writes.
        assert_eq!(
            store.db.latest_sequence_number() - seq_before,
            records as u64
        );
        // One batch and none are written as they are.
        let mut b = WriteBatch::default();
        b.put_cf(store.cf(cf::META), b"one", b"1");
        store.write_all(vec![b], false).unwrap();
        store.write_all(Vec::new(), false).unwrap();
        assert_eq!(store.get(cf::META, b"one").unwrap(), Some(b"1".to_vec()));
    }
}

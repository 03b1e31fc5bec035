//! JetStream as the partition log: one stream per partition (`METERD_J_<p>`, subject
//! `meterd.j.<p>`), three or more replicas on file storage, and the server checks cluster
//! mode makes before it trusts the engine.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, DeliverPolicy},
    context::PublishErrorKind,
    message::PublishMessage,
    stream,
};
use futures_util::StreamExt;

use super::{AppendError, PartitionLog};

/// The oldest NATS server cluster mode runs against: 2.14 has the conditional-append
/// fixes, `sync_interval`, and leaders that apply their log before serving
/// (../README "Cluster").
/// (Keep [`EngineError::TooOld`]'s message in step.)
pub const MIN_SERVER: (u64, u64, u64) = (2, 14, 0);

/// The fewest replicas a journal stream may have: with three, an acknowledged append is
/// on two fsynced disks and survives the loss of any one server.
pub const MIN_REPLICAS: usize = 3;

/// How long the stream remembers message ids: far longer than a writer retries one
/// append (`retry_for`), so a late retry is still recognised as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(300);

/// Why cluster mode does not trust the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The server is older than [`MIN_SERVER`].
    #[error(
        "NATS server {0} is too old: cluster mode needs 2.14.0 or newer \
         (conditional appends, sync_interval); run NATS from its own distribution"
    )]
    TooOld(String),
    /// JetStream is not enabled on the server.
    #[error("JetStream is not enabled on NATS server {0}: start it with `jetstream` in its configuration")]
    NoJetStream(String),
    /// An existing stream's settings would lose acknowledged writes or break fencing.
    #[error("stream {stream} is unsafe for meterd's journal: {why}")]
    UnsafeStream {
        /// The stream.
        stream: String,
        /// What to change.
        why: String,
    },
    /// Talking to NATS failed (a timeout, no responders, a lost connection): worth
    /// retrying while the servers settle.
    #[error("NATS: {0}")]
    Nats(String),
    /// A failure retrying would not mend: a message meterd cannot apply, a local
    /// store error.
    #[error("{0}")]
    Fatal(String),
}

/// Parses `major.minor.patch` (a pre-release suffix ignored).
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Checks the server `client` is connected to: version and JetStream. Waits (a round
/// trip) until the client is connected, since the server's details come with the
/// connection.
pub async fn check_server(client: &async_nats::Client) -> Result<(), EngineError> {
    client
        .flush()
        .await
        .map_err(|e| EngineError::Nats(format!("connecting: {e}")))?;
    let info = client.server_info();
    match parse_version(&info.version) {
        Some(v) if v >= MIN_SERVER => {}
        _ => return Err(EngineError::TooOld(info.version)),
    }
    if !info.jetstream {
        return Err(EngineError::NoJetStream(info.version));
    }
    Ok(())
}

/// The journal stream of partition `p`.
pub fn stream_name(p: u32) -> String {
    format!("METERD_J_{p}")
}

/// The subject partition `p`'s journal is appended on.
pub fn subject(p: u32) -> String {
    format!("meterd.j.{p}")
}

/// Why `config` is unsafe for a journal stream, if it is.
fn unsafe_because(config: &stream::Config, subject: &str) -> Option<String> {
    if config.storage != stream::StorageType::File {
        return Some("its storage is memory; it must be file".into());
    }
    if config.num_replicas < MIN_REPLICAS {
        return Some(format!(
            "it has {} replica(s); it needs at least {MIN_REPLICAS} (`nats stream edit --replicas {MIN_REPLICAS}`)",
            config.num_replicas
        ));
    }
    if config.duplicate_window < DUPLICATE_WINDOW {
        return Some(format!(
            "its duplicate window is {:?}; it needs at least {:?}",
            config.duplicate_window, DUPLICATE_WINDOW
        ));
    }
    if config.subjects.iter().all(|s| s != subject) {
        return Some(format!("it does not hold the subject {subject}"));
    }
    if config.discard == stream::DiscardPolicy::New
        && (config.max_messages > 0 || config.max_bytes > 0)
    {
        return Some("it discards new messages when full; appends would fail".into());
    }
    None
}

/// A partition's journal stream on JetStream.
#[derive(Debug, Clone)]
pub struct NatsLog {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    max_payload: usize,
}

impl NatsLog {
    /// Opens partition `p`'s journal stream, creating it (file storage, `replicas`
    /// replicas, [`DUPLICATE_WINDOW`]) if it does not exist; refuses an existing one
    /// whose settings are unsafe.
    pub async fn open(
        js: &jetstream::Context,
        p: u32,
        replicas: usize,
    ) -> Result<NatsLog, EngineError> {
        let name = stream_name(p);
        let subject = subject(p);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            num_replicas: replicas.max(MIN_REPLICAS),
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| EngineError::Nats(format!("stream {name}: {e}")))?;
        let info = stream
            .info()
            .await
            .map_err(|e| EngineError::Nats(format!("stream {name}: {e}")))?;
        if let Some(why) = unsafe_because(&info.config, &subject) {
            return Err(EngineError::UnsafeStream { stream: name, why });
        }
        Ok(NatsLog {
            js: js.clone(),
            stream,
            subject,
            max_payload: js.client().server_info().max_payload,
        })
    }

    /// The stream's last sequence (0 when empty).
    pub async fn last_seq(&self) -> Result<u64, AppendError> {
        let mut s = self.stream.clone();
        s.info()
            .await
            .map(|i| i.state.last_sequence)
            .map_err(|e| AppendError::Transient(e.to_string()))
    }

    /// The stream's messages from `from` on, in order, as `(sequence, pending,
    /// payload)` where `pending` counts the messages after it already in the stream; the
    /// stream of them ends only on an error (an ordered consumer, recreated by the
    /// client after a hiccup).
    pub async fn tail(
        &self,
        from: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<(u64, u64, i64, bytes::Bytes), AppendError>>,
        AppendError,
    > {
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| AppendError::Transient(e.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| AppendError::Transient(e.to_string()))?;
        Ok(messages.map(|m| {
            let m = m.map_err(|e| AppendError::Transient(e.to_string()))?;
            let info = m
                .info()
                .map_err(|e| AppendError::Transient(e.to_string()))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
            Ok((seq, pending, published_ms, m.message.payload))
        }))
    }
}

impl PartitionLog for NatsLog {
    async fn append(
        &self,
        msg_id: &str,
        expected_last: u64,
        payload: Vec<u8>,
    ) -> Result<u64, AppendError> {
        let msg = PublishMessage::build()
            .payload(payload.into())
            .message_id(msg_id)
            .expected_last_sequence(expected_last);
        let ack = match self.js.send_publish(self.subject.clone(), msg).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(a) => Ok(a.sequence),
            Err(e) => Err(match e.kind() {
                PublishErrorKind::WrongLastSequence => AppendError::WrongLastSequence,
                PublishErrorKind::MaxPayloadExceeded => AppendError::Refused(e.to_string()),
                // "No stream found" is also what a stream answers while it elects a
                // leader (no server takes its subject for a moment): retried.
                PublishErrorKind::StreamNotFound => AppendError::Transient(e.to_string()),
                _ => AppendError::Transient(e.to_string()),
            }),
        }
    }

    async fn msg_id_at(&self, seq: u64) -> Result<Option<String>, AppendError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_raw_message(seq).await {
            Ok(m) => Ok(m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string())),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(AppendError::Transient(e.to_string())),
        }
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_compared_numerically() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.14.0-beta.2"), Some((2, 14, 0)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER);
        assert!(parse_version("2.14.0").unwrap() >= MIN_SERVER);
        assert!(parse_version("2.100.0").unwrap() >= MIN_SERVER);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn unsafe_stream_settings_are_named() {
        let good = stream::Config {
            name: "METERD_J_0".into(),
            subjects: vec![subject(0)],
            num_replicas: 3,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        assert_eq!(unsafe_because(&good, &subject(0)), None);
        let one = stream::Config {
            num_replicas: 1,
            ..good.clone()
        };
        assert!(unsafe_because(&one, &subject(0))
            .unwrap()
            .contains("1 replica"));
        let memory = stream::Config {
            storage: stream::StorageType::Memory,
            ..good.clone()
        };
        assert!(unsafe_because(&memory, &subject(0))
            .unwrap()
            .contains("memory"));
        let short = stream::Config {
            duplicate_window: Duration::from_secs(10),
            ..good.clone()
        };
        assert!(unsafe_because(&short, &subject(0))
            .unwrap()
            .contains("duplicate window"));
        assert!(unsafe_because(&good, &subject(1))
            .unwrap()
            .contains("subject"));
    }
}

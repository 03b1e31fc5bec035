//! Threshold notifications: a durable outbox and signed webhook delivery (SPEC 3).
//!
//! When an event moves a quota period's usage across a threshold, ingest writes an
//! outbox record in the same atomic batch as the event (so a crossing is recorded if and
//! only if the usage that caused it is). After the commit the record is handed to the
//! [`Outbox`]; at start-up every record still in the `outbox` column family is loaded
//! again. A delivery task POSTs each record's JSON body to the tenant's `webhook_url`
//! and deletes the record once the receiver answered 2xx. Failures are retried with
//! exponential backoff and jitter (`webhook_retry_initial` doubling up to
//! `webhook_retry_max`, each delay drawn uniformly from its upper half) until
//! `webhook_max_age`, after which the record is dropped and counted. Delivery is at
//! least once: a receiver deduplicates by the notification `id`, which is stable for
//! one crossing (tenant, contract, lever, period, threshold, limit). Each threshold
//! notifies at most once per period and limit: usage falling and rising again (a
//! `latest` lever, a retraction) does not notify twice; a changed limit is a new
//! crossing with a new id.
//!
//! Each request carries:
//! - `meterd-webhook-id`: the notification id;
//! - `meterd-webhook-timestamp`: Unix seconds of this attempt;
//! - `meterd-signature`: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::{WebhookConfig, WebhookSettings};
use crate::quota::book::Crossing;
use crate::store::writes::Writes;
use crate::store::{Store, StoreError};
use crate::telemetry::names;
use crate::window::rfc3339;

/// Most deliveries in flight at once.
const CONCURRENCY: usize = 16;

/// One undelivered notification as stored in the `outbox` column family.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Tenant whose webhook receives it.
    pub tenant: String,
    /// Notification id (stable per crossing).
    pub id: String,
    /// When the crossing was recorded (epoch ms).
    pub created_ms: i64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt (epoch ms).
    pub next_ms: i64,
    /// The JSON body POSTed to the receiver.
    pub body: String,
}

/// Stable id of a crossing.
pub fn crossing_id(tenant: &str, c: &Crossing) -> String {
    let mut h = Sha256::new();
    for part in [
        tenant.as_bytes(),
        c.key.contract.as_bytes(),
        c.key.lever.as_bytes(),
        c.key.kind.as_str().as_bytes(),
    ] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.update(c.key.start.to_be_bytes());
    h.update(c.threshold.to_be_bytes());
    h.update(c.limit.0.to_be_bytes());
    let d = h.finalize();
    format!("thr_{}", hex::encode(&d[..16]))
}

/// Builds the outbox entry of a crossing caused by event `event_id` at `now_ms`.
pub fn entry_for(tenant: &str, c: &Crossing, event_id: &str, now_ms: i64) -> Entry {
    let id = crossing_id(tenant, c);
    let lifetime = c.key.end == i64::MAX;
    let mut body = serde_json::json!({
        "id": id,
        "type": "quota.threshold_crossed",
        "contract": &*c.key.contract,
        "lever": &*c.key.lever,
        "period": c.key.kind.as_str(),
        "threshold": c.threshold,
        "usage": c.usage,
        "limit": c.limit,
        "mode": if c.hard { "hard" } else { "soft" },
        "event_id": event_id,
        "time": rfc3339(now_ms),
    });
    if let Some(obj) = body.as_object_mut() {
        if !lifetime {
            obj.insert("period_start".into(), rfc3339(c.key.start).into());
            obj.insert("period_end".into(), rfc3339(c.key.end).into());
        }
    }
    Entry {
        tenant: tenant.to_string(),
        id,
        created_ms: now_ms,
        attempts: 0,
        next_ms: now_ms,
        body: body.to_string(),
    }
}

/// The signature header value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Delay before attempt `attempts + 1`: `initial * 2^(attempts-1)` capped at `max`, drawn
/// uniformly from its upper half.
pub fn backoff(s: &WebhookSettings, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = s
        .retry_initial
        .saturating_mul(1u32 << exp)
        .min(s.retry_max)
        .as_millis() as u64;
    let half = full / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=full - half))
}

/// The undelivered notifications and the sequence of the next one.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<BTreeMap<u64, Entry>>,
    next_seq: AtomicU64,
    wake: Notify,
}

impl Outbox {
    /// Loads the stored records.
    pub fn load(store: &Store) -> Result<Outbox, StoreError> {
        let mut queue = BTreeMap::new();
        store.scan_all_outbox(|seq, v| {
            let e: Entry =
                serde_json::from_slice(v).map_err(|_| StoreError::Corrupt("outbox record"))?;
            queue.insert(seq, e);
            Ok(())
        })?;
        let next = queue.keys().next_back().map(|s| s + 1).unwrap_or(1);
        metrics::gauge!(names::WEBHOOK_OUTBOX_DEPTH).set(queue.len() as f64);
        Ok(Outbox {
            queue: Mutex::new(queue),
            next_seq: AtomicU64::new(next),
            wake: Notify::new(),
        })
    }

    /// Adds `entries` to `batch` under fresh sequence numbers; returns them for
    /// [`Outbox::enqueue`] once the batch is committed.
    pub fn stage(&self, rows: &mut Writes<'_>, entries: Vec<Entry>) -> Vec<(u64, Entry)> {
        // Almost every request crosses no threshold.
        if entries.is_empty() {
            return Vec::new();
        }
        entries
            .into_iter()
            .map(|e| {
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                let enc = serde_json::to_vec(&e).expect("entries serialize");
                rows.put_outbox(seq, &enc);
                (seq, e)
            })
            .collect()
    }

    /// Hands committed entries to the delivery task.
    pub fn enqueue(&self, entries: Vec<(u64, Entry)>) {
        if entries.is_empty() {
            return;
        }
        metrics::counter!(names::QUOTA_THRESHOLD_CROSSINGS_TOTAL).increment(entries.len() as u64);
        let depth = {
            let mut q = crate::sync::lock(&self.queue);
            q.extend(entries);
            q.len()
        };
        metrics::gauge!(names::WEBHOOK_OUTBOX_DEPTH).set(depth as f64);
        self.wake.notify_one();
    }

    /// Number of undelivered notifications.
    pub fn depth(&self) -> usize {
        crate::sync::lock(&self.queue).len()
    }

    /// Delivers notifications until `stop` resolves. `webhook_of` looks up a tenant's
    /// webhook (at each delivery, so registry changes apply); `store` takes the
    /// outcomes of deliveries.
    pub async fn run(
        self: Arc<Self>,
        settings: WebhookSettings,
        store: Store,
        webhook_of: impl Fn(&str) -> Option<Arc<WebhookConfig>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let store = &store;
        let client = match reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("meterd/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook client could not be built; notifications stay in the outbox");
                return;
            }
        };
        tokio::pin!(stop);
        let mut in_flight: std::collections::HashSet<u64> = std::collections::HashSet::new();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let now = crate::window::now_ms();
            // Start due deliveries.
            let (due, next_due) = {
                let q = crate::sync::lock(&self.queue);
                let mut due = Vec::new();
                let mut next_due = i64::MAX;
                for (seq, e) in q.iter() {
                    if in_flight.contains(seq) {
                        continue;
                    }
                    if e.next_ms <= now {
                        if in_flight.len() + due.len() < CONCURRENCY {
                            due.push((*seq, e.clone()));
                        }
                    } else {
                        next_due = next_due.min(e.next_ms);
                    }
                }
                (due, next_due)
            };
            for (seq, e) in due {
                in_flight.insert(seq);
                let target = webhook_of(&e.tenant);
                let client = client.clone();
                tasks.spawn(async move {
                    let result = match target {
                        Some(w) => deliver(&client, &w.url, w.secret.as_bytes(), &e).await,
                        None => Err("the tenant has no webhook configured".to_string()),
                    };
                    (seq, e, result)
                });
            }
            let sleep = if next_due == i64::MAX {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis((next_due - now).clamp(1, 3_600_000) as u64)
            };
            tokio::select! {
                _ = &mut stop => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let Ok((seq, e, result)) = done else { continue };
                    in_flight.remove(&seq);
                    self.finish(store, &settings, seq, e, result);
                }
            }
        }
    }

    fn finish(
        &self,
        store: &Store,
        settings: &WebhookSettings,
        seq: u64,
        mut e: Entry,
        result: Result<(), String>,
    ) {
        let now = crate::window::now_ms();
        let remove = match result {
            Ok(()) => {
                metrics::counter!(names::WEBHOOK_ATTEMPTS_TOTAL, "outcome" => "delivered")
                    .increment(1);
                true
            }
            Err(reason) => {
                metrics::counter!(names::WEBHOOK_ATTEMPTS_TOTAL, "outcome" => "failed")
                    .increment(1);
                e.attempts = e.attempts.saturating_add(1);
                if now - e.created_ms > settings.max_age.as_millis() as i64 {
                    metrics::counter!(names::WEBHOOK_DROPPED_TOTAL).increment(1);
                    tracing::error!(id = %e.id, tenant = %e.tenant, attempts = e.attempts, %reason,
                        "webhook notification dropped after webhook_max_age");
                    true
                } else {
                    let delay = backoff(settings, e.attempts);
                    e.next_ms = now + delay.as_millis() as i64;
                    tracing::warn!(id = %e.id, tenant = %e.tenant, attempts = e.attempts, %reason,
                        retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
                    false
                }
            }
        };
        let mut batch = store.writes(0);
        if remove {
            batch.delete_outbox(seq);
        } else {
            batch.put_outbox(seq, &serde_json::to_vec(&e).expect("entries serialize"));
        }
        // Not synced: losing this write only repeats a delivery or an attempt count.
        if let Err(err) = store.apply(batch, false) {
            tracing::error!(error = %err, "outbox update failed");
        }
        let depth = {
            let mut q = crate::sync::lock(&self.queue);
            if remove {
                q.remove(&seq);
            } else {
                q.insert(seq, e);
            }
            q.len()
        };
        metrics::gauge!(names::WEBHOOK_OUTBOX_DEPTH).set(depth as f64);
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    e: &Entry,
) -> Result<(), String> {
    let ts = crate::window::now_ms().div_euclid(1000);
    let started = std::time::Instant::now();
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .header("meterd-webhook-id", &e.id)
        .header("meterd-webhook-timestamp", ts.to_string())
        .header("meterd-signature", signature(secret, ts, e.body.as_bytes()))
        .body(e.body.clone())
        .send()
        .await;
    metrics::histogram!(names::WEBHOOK_DELIVERY_SECONDS).record(started.elapsed().as_secs_f64());
    match res {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("receiver answered {}", r.status())),
        Err(err) => Err(format!("request failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_reference_vector() {
        // Reference computed independently with Python's hmac module.
        let s = signature(
            b"whsec_0123456789abcdef",
            1_700_000_000,
            br#"{"id":"thr_1"}"#,
        );
        assert_eq!(
            s,
            "t=1700000000,v1=9043df63bebd952eb45670b7111846ccd2877b0a3e96c98b9dbcdb5c35e6d7cd"
        );
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        let s = WebhookSettings {
            timeout: Duration::from_secs(1),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
            max_age: Duration::from_secs(60),
        };
        for _ in 0..100 {
            let d1 = backoff(&s, 1).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            let d3 = backoff(&s, 3).as_millis();
            assert!((200..=400).contains(&d3), "{d3}");
            let d20 = backoff(&s, 20).as_millis();
            assert!((500..=1000).contains(&d20), "{d20}");
        }
    }
}

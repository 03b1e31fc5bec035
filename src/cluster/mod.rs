//! Cluster mode's node runtime: meterd nodes on a NATS JetStream cluster
//! (docs/cluster.md).
//!
//! The event space is cut into `partitions` by (tenant, chain root). Each partition's
//! journal is a replicated stream ([`crate::journal::stream`]); one node owns a
//! partition at a time, by a lease ([`lease`]), and decides its events; every other
//! node follows its stream as a standby ([`partition`]). Registry changes go through a
//! registry stream every node applies in order ([`registry`]). A request for a
//! partition this node does not own is sent to its owner over NATS request-reply
//! ([`crate::ingest::ingest_routed`]).
//!
//! Start-up ([`Node::start`]): connect and check the engine (version, JetStream, every
//! stream's replicas and storage), apply the registry stream to its end, start a
//! standby for every partition, then take part in the lease rounds: every
//! `lease_renew` the node heartbeats its membership, renews its leases (giving up a
//! partition whose lease it lost, whose writer stepped down, or that another live node
//! is now preferred for) and acquires the leases of partitions it is preferred for.

pub mod lease;
mod partition;
mod registry;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::journal::stream::nats::{self, EngineError, NatsLog};
use crate::journal::stream::{Partitions, RegistryJournal, REGISTRY};
use crate::state::{PeerError, Peers, State};
use lease::{preferred, Buckets, Renewal};
use partition::Role;

/// How long a forwarded request waits for its partition owner's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);

/// How long joining keeps retrying what fails while the NATS servers settle (a
/// stream created while its Raft group elects a leader times out; a bucket without a
/// leader yet has no responders) before giving up with the last error.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `step` until it succeeds, retrying [`EngineError::Nats`] failures with a
/// growing pause until `deadline`; any other error (unsafe settings, a too old
/// server, a message that cannot be applied) is returned at once.
async fn settled<T, F, Fut>(what: &str, deadline: Instant, mut step: F) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    let mut pause = Duration::from_millis(200);
    loop {
        match step().await {
            Err(EngineError::Nats(e)) if Instant::now() + pause < deadline => {
                tracing::warn!(step = what, error = %e, "joining the cluster: retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// The subject partition `p`'s owner takes forwarded requests of `kind` on.
///
/// `meterd.fwd.<kind>.<p>`: four tokens, so the owner's subscription
/// (`meterd.fwd.*.<p>`) can never take a journal append (`meterd.j.<p>`, three tokens).
/// It once was `meterd.<kind>.<p>`, whose `meterd.*.<p>` also matched the journal
/// subject: the owner answered its own appends ("unreadable forwarded request") before
/// JetStream did, every append failed once and was re-sent, and each took 20 ms more.
fn forward_subject(kind: &str, p: u32) -> String {
    format!("meterd.fwd.{kind}.{p}")
}

/// What the runtime's tasks share.
pub(crate) struct Shared {
    cfg: ClusterConfig,
    state: Arc<State>,
    client: async_nats::Client,
    journals: Arc<Partitions>,
    logs: Vec<NatsLog>,
    roles: Vec<Mutex<Role>>,
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The revision of the last renewal.
    rev: u64,
    /// When it was last renewed.
    renewed: Instant,
}

/// A running cluster node.
pub struct Node {
    shared: Arc<Shared>,
    buckets: Buckets,
    leases: JoinHandle<()>,
    registry: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.shared.cfg.node)
            .finish_non_exhaustive()
    }
}

/// The node as [`Peers`] (what the ingest router sees).
#[derive(Debug)]
struct Router {
    partitions: u32,
    journals: Arc<Partitions>,
    client: async_nats::Client,
}

impl Peers for Router {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn owns(&self, p: u32) -> bool {
        self.journals.owned(p).is_some()
    }

    fn request(
        &self,
        kind: &'static str,
        p: u32,
        request: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'_, Result<bytes::Bytes, PeerError>> {
        Box::pin(async move {
            let req = async_nats::Request::new()
                .payload(request.into())
                .timeout(Some(FORWARD_TIMEOUT));
            metrics::counter!(crate::telemetry::names::CLUSTER_FORWARDS_TOTAL).increment(1);
            match self
                .client
                .send_request(forward_subject(kind, p), req)
                .await
            {
                Ok(msg) => Ok(msg.payload),
                Err(e) => Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => PeerError::NoOwner(p),
                    async_nats::RequestErrorKind::TimedOut => PeerError::Timeout(p),
                    _ => PeerError::Other(p, e.to_string()),
                }),
            }
        })
    }
}

/// Subscribes to partition `p`'s forwarded requests (ingest parts, balance reads,
/// adjustments) and
/// answers them (this node owns `p`). The task ends when aborted (the partition is
/// given up).
async fn serve_forwarded(shared: Arc<Shared>, p: u32) -> JoinHandle<()> {
    let sub = shared.client.subscribe(forward_subject("*", p)).await;
    tokio::spawn(async move {
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(partition = p, error = %e, "cannot take forwarded requests");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let kind = msg.subject.as_str().split('.').nth(2).unwrap_or("");
                let reply = match kind {
                    "balance" => {
                        crate::query::balance::serve_forwarded(&shared.state, &msg.payload)
                    }
                    "adjust" => {
                        crate::corrections::forward::serve_forwarded(&shared.state, &msg.payload)
                    }
                    _ => crate::ingest::serve_forwarded(&shared.state, p, &msg.payload).await,
                };
                if let Some(to) = msg.reply {
                    let _ = shared.client.publish(to, reply.into()).await;
                }
            });
        }
    })
}

/// Connects to the NATS servers of `cfg`.
async fn connect(cfg: &ClusterConfig) -> Result<async_nats::Client, EngineError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("meterd {}", cfg.node))
        .retry_on_initial_connect();
    if let Some(creds) = &cfg.credentials {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| EngineError::Nats(format!("credentials {}: {e}", creds.display())))?;
    }
    let client = opts
        .connect(cfg.nats_urls.clone())
        .await
        .map_err(|e| EngineError::Nats(format!("connecting to {:?}: {e}", cfg.nats_urls)))?;
    tokio::time::timeout(Duration::from_secs(30), nats::check_server(&client))
        .await
        .map_err(|_| {
            EngineError::Nats(format!(
                "no NATS server of {:?} answered within 30 s",
                cfg.nats_urls
            ))
        })??;
    Ok(client)
}

impl Node {
    /// Joins the cluster (see the module note). `journals` is the state's journal.
    /// Returns once the registry is caught up and every partition has a standby.
    pub async fn start(
        state: Arc<State>,
        journals: Arc<Partitions>,
        cfg: ClusterConfig,
    ) -> Result<Node, EngineError> {
        let client = connect(&cfg).await?;
        let needed = 2 * state.cfg.max_body_bytes + (64 << 10);
        let max_payload = client.server_info().max_payload;
        if max_payload < needed {
            return Err(EngineError::Nats(format!(
                "the NATS servers' max_payload is {max_payload} bytes; forwarding a request of \
                 max_body_bytes ({}) needs at least {needed}: raise max_payload, or lower max_body_bytes",
                state.cfg.max_body_bytes
            )));
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut logs = Vec::with_capacity(cfg.partitions as usize);
        for p in 0..cfg.partitions {
            logs.push(
                settled("journal stream", deadline, || {
                    NatsLog::open(&js, p, cfg.replicas)
                })
                .await?,
            );
        }
        let registry_log = Arc::new(
            settled("registry stream", deadline, || {
                NatsLog::open(&js, REGISTRY, cfg.replicas)
            })
            .await?,
        );
        let buckets = settled("lease buckets", deadline, || {
            Buckets::open(&js, cfg.lease_ttl, cfg.replicas)
        })
        .await?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        // The registry first: partitions are assigned by chain roots.
        let (registry, applied) = settled("registry catch-up", deadline, || {
            registry::start(state.clone(), registry_log.clone(), stop_rx.clone())
        })
        .await?;
        journals.set_registry(Arc::new(RegistryJournal::new(
            state.store.clone(),
            registry_log,
            tokio::runtime::Handle::current(),
            cfg.node.clone(),
            applied,
            cfg.append_retry,
        )));
        let shared = Arc::new(Shared {
            roles: (0..cfg.partitions)
                .map(|_| Mutex::new(Role::Moving))
                .collect(),
            cfg: cfg.clone(),
            state: state.clone(),
            client: client.clone(),
            journals: journals.clone(),
            logs,
        });
        for p in 0..cfg.partitions {
            let role = partition::start_standby(&shared, p)
                .map_err(|e| EngineError::Nats(format!("partition {p}: {e}")))?;
            *shared.roles[p as usize].lock().await = role;
        }
        let _ = state.peers.set(Arc::new(Router {
            partitions: cfg.partitions,
            journals,
            client,
        }));
        crate::telemetry::zero::register_cluster(cfg.partitions);
        let leases = tokio::spawn(lease_rounds(shared.clone(), buckets.clone(), stop_rx));
        tracing::info!(node = %cfg.node, partitions = cfg.partitions, "joined the cluster");
        Ok(Node {
            shared,
            buckets,
            leases,
            registry,
            stop,
        })
    }

    /// Leaves the cluster: gives every owned partition up (releasing its lease, so
    /// another node takes it over at once) and leaves the membership.
    pub async fn stop(self) {
        // The lease rounds end by giving up what this node owns and releasing the
        // leases.
        let _ = self.stop.send(true);
        let _ = self.leases.await;
        self.buckets.leave(&self.shared.cfg.node).await;
        self.registry.abort();
    }
}

/// The lease rounds (see the module note), until `stop`.
async fn lease_rounds(
    shared: Arc<Shared>,
    buckets: Buckets,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let node = shared.cfg.node.clone();
    let ttl = shared.cfg.lease_ttl;
    let renew = shared.cfg.lease_renew;
    let mut held: HashMap<u32, Held> = HashMap::new();
    let mut members: BTreeSet<String> = BTreeSet::from([node.clone()]);
    let mut taking: HashMap<u32, JoinHandle<bool>> = HashMap::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let round = Instant::now();
        match buckets.heartbeat(&node).await {
            Ok(m) => members = m,
            Err(e) => tracing::warn!(error = %e, "membership heartbeat failed"),
        }
        taking.retain(|_, t| !t.is_finished());
        for p in 0..shared.cfg.partitions {
            let want = preferred(p, &members) == Some(node.as_str());
            if let Some(h) = held.get(&p).copied() {
                let stepped_down = shared
                    .journals
                    .owned(p)
                    .and_then(|j| j.stepped_down())
                    .map(|e| e.to_string());
                let renewed = buckets.renew(p, &node, h.rev).await;
                let lost = match renewed {
                    Ok(rev) => {
                        metrics::counter!(crate::telemetry::names::CLUSTER_LEASE_RENEWALS_TOTAL)
                            .increment(1);
                        held.insert(
                            p,
                            Held {
                                rev,
                                renewed: Instant::now(),
                            },
                        );
                        None
                    }
                    Err(Renewal::Lost) => Some("its lease was lost".to_string()),
                    Err(Renewal::Unknown(e)) if h.renewed.elapsed() + renew >= ttl => {
                        Some(format!("its lease could not be renewed in time: {e}"))
                    }
                    Err(Renewal::Unknown(_)) => None,
                };
                if lost.is_some() {
                    metrics::counter!(crate::telemetry::names::CLUSTER_LEASE_LOSSES_TOTAL)
                        .increment(1);
                }
                let why = lost.clone().or(stepped_down).or_else(|| {
                    (!want && !taking.contains_key(&p))
                        .then(|| "another node is preferred for it".to_string())
                });
                if let Some(why) = why {
                    if taking.get(&p).is_some_and(|t| !t.is_finished()) {
                        // Let the takeover finish first; the next round decides.
                        continue;
                    }
                    partition::give_up(&shared, p, &why).await;
                    let h = held.remove(&p).expect("held");
                    if lost.is_none() {
                        buckets.release(p, h.rev).await;
                    }
                }
            } else if want && !taking.contains_key(&p) {
                if let Some(epoch) = buckets.acquire(p, &node).await {
                    held.insert(
                        p,
                        Held {
                            rev: epoch,
                            renewed: Instant::now(),
                        },
                    );
                    let s = shared.clone();
                    taking.insert(
                        p,
                        tokio::spawn(async move { partition::take_over(&s, p, epoch).await }),
                    );
                }
            }
        }
        // A takeover that failed leaves the lease to expire or be retaken next round.
        for (p, t) in taking.iter() {
            if t.is_finished() && shared.journals.owned(*p).is_none() {
                if let Some(h) = held.remove(p) {
                    buckets.release(*p, h.rev).await;
                }
            }
        }
        let left = renew.saturating_sub(round.elapsed());
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(left) => {}
        }
    }
    // Stopping: release what is held once the partitions are given up (Node::stop).
    for t in taking.into_values() {
        let _ = t.await;
    }
    for (p, h) in held {
        partition::give_up(&shared, p, "stopping").await;
        buckets.release(p, h.rev).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NATS subject matching: `*` is one token, `>` the rest.
    fn matches(pattern: &str, subject: &str) -> bool {
        let (p, s): (Vec<&str>, Vec<&str>) =
            (pattern.split('.').collect(), subject.split('.').collect());
        for (i, t) in p.iter().enumerate() {
            match *t {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if s.get(i) == Some(&t) => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    #[test]
    fn an_owner_takes_forwarded_requests_and_never_its_own_journal_appends() {
        assert!(matches("meterd.*.3", "meterd.j.3"), "the matcher");
        for p in [0, 3, 4095, crate::journal::stream::REGISTRY] {
            let takes = forward_subject("*", p);
            for kind in ["ingest", "balance", "adjust"] {
                assert!(matches(&takes, &forward_subject(kind, p)), "{kind} {p}");
            }
            for q in [0, 3, 4095, crate::journal::stream::REGISTRY] {
                let journal = crate::journal::stream::nats::subject(q);
                assert!(!matches(&takes, &journal), "{takes} takes {journal}");
            }
        }
    }
}

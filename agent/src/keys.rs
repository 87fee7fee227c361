//! The decisions of the node's key loop, apart from their effects.
//!
//! Every `leader_poll_ms` the agent asks its own etcd member for Status. From what that
//! says (this member leads, or another does), what the agent holds (a lease, the role last
//! written into the node key, when the leader key was last confirmed) and the time, [`Keys`]
//! decides what this poll does, in this order:
//! 1. grant a lease when none is held (nothing else happens this poll if that fails);
//! 2. write `/clusterlab/nodes/<name>` when it does not hold the current role yet, and read
//!    it back every [`NODE_KEY_RECHECK`] (rewriting it unless it is this node's record on
//!    this lease: a hand-made `etcdctl put` over it would otherwise drop the node from every
//!    reader's view for good);
//! 3. while leading, check `/clusterlab/leader` and rewrite it if it is not this node's on
//!    this lease, at most every [`LEADER_KEY_RECHECK`]. What to do with the value found
//!    there is [`Keys::leader_key_action`]: the write is one etcd transaction that succeeds
//!    only if the key is still at the revision that was read, and a record of a higher raft
//!    term than this node's is left alone (this node is a leader that has not heard it was
//!    replaced) unless it outlives [`Keys::forged_after`], which no real newer leader's can.
//!
//! The effects (etcd calls, the health status, logs) are in [`crate::node`]; they report
//! back what succeeded through [`Keys::lease_granted`], [`Keys::node_key_written`],
//! [`Keys::leader_key_confirmed`] and [`Keys::lease_lost`], so a failed step is simply
//! planned again at the next poll.

use clusterlab_core::schema::{self, Peer, Role, SchemaError};
use std::time::Duration;
use tokio::time::Instant;

/// How often, while this node leads, the leader key is read back (and rewritten unless it
/// is this node's record on this node's lease).
///
/// Not every poll: at the default 200 ms poll that would be five reads a second on the
/// leader for a key that changes only at failover. The check is what repairs a leader key
/// that someone else overwrote or deleted (a demoted leader's late write, an operator), so
/// 2 s bounds how long such a key can point elsewhere while this node leads: well inside
/// the default 10 s lease TTL, after which a stale writer's key would expire anyway. The
/// first check after becoming leader, or after a new lease, is immediate.
pub const LEADER_KEY_RECHECK: Duration = Duration::from_secs(2);

/// How often the node key is read back while nothing else rewrites it. A write to the key
/// by anybody is seen at once by the agent's own-key watch, which asks for a read-back
/// ([`Keys::node_key_changed`]); this period is the fallback for a watch that stalled
/// unnoticed, and bounds how long an overwritten node key could then hide this node.
pub const NODE_KEY_RECHECK: Duration = Duration::from_secs(10);

/// How long a leader-key record of a higher raft term than this node's own must stay at
/// the same revision, while this node's member keeps reporting itself leader in its lower
/// term, before it is taken for a forgery and overwritten: this many election timeouts.
///
/// Raft terms only grow, and etcd runs raft with check-quorum: a member that still calls
/// itself leader of term T more than an election timeout after a term above T was elected
/// would have had to keep a quorum that had already moved on, which cannot happen. A real
/// newer leader's record therefore makes this node a follower well within this time.
pub const FORGED_AFTER_ELECTIONS: u32 = 3;

/// The role this member's Status reports: leader when the raft leader it names is itself.
pub fn role_of(raft_leader: u64, member_id: u64) -> Role {
    if raft_leader == member_id {
        Role::Leader
    } else {
        Role::Follower
    }
}

/// A change of role seen by a poll; `from` is `None` on the first observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleChange {
    pub from: Option<Role>,
    pub to: Role,
}

/// The node key's content that a poll wants written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeKeyWrite {
    pub role: Role,
    /// Unix time in seconds when the node took this role.
    pub since: u64,
}

/// What one poll does, in field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// No lease is held: grant one first. If that fails, the rest waits for the next poll.
    pub grant_lease: bool,
    /// The node key does not hold the current role (or the lease it was on is gone).
    pub put_node_key: Option<NodeKeyWrite>,
    /// The node key was written and not read back within [`NODE_KEY_RECHECK`]: read it, and
    /// write this content unless it is there on the current lease.
    pub check_node_key: Option<NodeKeyWrite>,
    /// Leading, and the leader key was not confirmed within [`LEADER_KEY_RECHECK`].
    pub ensure_leader_key: bool,
}

/// What the key loop remembers between polls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// The role the last successful Status reported.
    role: Option<Role>,
    /// Unix seconds when `role` was first reported.
    role_since: u64,
    /// The lease the node's keys live on, if one is held.
    lease: Option<i64>,
    /// The role the node key holds on `lease`.
    written_role: Option<Role>,
    /// When the leader key was last confirmed as this node's on `lease`.
    leader_checked_at: Option<Instant>,
    /// When the node key was last written or read back as this node's on `lease`.
    node_checked_at: Option<Instant>,
    /// A higher-term record this node is leaving alone, since when.
    yielded: Option<Yielded>,
    /// See [`FORGED_AFTER_ELECTIONS`].
    forged_after: Duration,
}

/// A higher-term leader record that was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Yielded {
    my_term: u64,
    mod_revision: i64,
    since: Instant,
}

/// The leader key as read by the key loop: absent, or its value with the lease it is on and
/// the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenLeaderKey {
    pub value: Vec<u8>,
    pub lease: i64,
    pub mod_revision: i64,
}

/// This node as the writer of the leader key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writer<'a> {
    pub name: &'a str,
    pub member_id: &'a str,
    pub lease: i64,
    /// The raft term in which this node's member last reported itself leader.
    pub term: u64,
}

/// Why the leader key is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteReason {
    Absent,
    /// What is there is no leader record any reader would trust.
    Untrusted(SchemaError),
    /// Another node's record, or this node's on an older lease or term.
    Outdated {
        name: String,
        term: u64,
    },
    /// A higher-term record that outlived [`Keys::forged_after`].
    ImpossibleTerm {
        name: String,
        term: u64,
    },
}

impl std::fmt::Display for WriteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteReason::Absent => f.write_str("the key is absent"),
            WriteReason::Untrusted(e) => write!(f, "the key holds no trusted record: {e}"),
            WriteReason::Outdated { name, term } => {
                write!(f, "the key names {name} in term {term}")
            }
            WriteReason::ImpossibleTerm { name, term } => write!(
                f,
                "the key names {name} in term {term}, above this leader's, and no newer leader took over: forged"
            ),
        }
    }
}

/// What the leader-key check does with what it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderKeyAction {
    /// It is this node's record on its lease and term already.
    Keep,
    /// Write this node's record in a transaction that succeeds only while the key's
    /// mod revision is still `expect_mod_revision` (0: the key is still absent), so a
    /// concurrent write by a newer leader wins.
    Write {
        expect_mod_revision: i64,
        reason: WriteReason,
    },
    /// A record of a higher term: a newer leader exists that this node's member has not
    /// heard of yet. Left alone; the next Status will most likely say follower.
    Yield { name: String, term: u64 },
}

impl Keys {
    /// A loop that has seen nothing yet; `unix_now` stands as the role's start until the
    /// first Status.
    pub fn new(unix_now: u64) -> Keys {
        Keys {
            role_since: unix_now,
            forged_after: LEADER_KEY_RECHECK,
            ..Keys::default()
        }
    }

    /// Sets the raft election timeout, from which [`Keys::forged_after`] follows.
    pub fn with_election_timeout(mut self, election: Duration) -> Keys {
        self.forged_after = (election * FORGED_AFTER_ELECTIONS).max(LEADER_KEY_RECHECK);
        self
    }

    /// How long a higher-term record is left alone before it counts as forged.
    pub fn forged_after(&self) -> Duration {
        self.forged_after
    }

    /// Decides what the leader-key check does with `seen` (what it read; `None`: absent),
    /// trusting records as every reader does (`peers`, planned IPs, leases). Remembers a
    /// higher-term record it yields to, so that one that outlives [`Keys::forged_after`]
    /// while this node keeps leading in its own term is overwritten.
    pub fn leader_key_action(
        &mut self,
        me: Writer<'_>,
        seen: Option<&SeenLeaderKey>,
        peers: &[Peer],
        now: Instant,
    ) -> LeaderKeyAction {
        let Some(seen) = seen else {
            self.yielded = None;
            return LeaderKeyAction::Write {
                expect_mod_revision: 0,
                reason: WriteReason::Absent,
            };
        };
        let write = |reason| LeaderKeyAction::Write {
            expect_mod_revision: seen.mod_revision,
            reason,
        };
        let rec = match schema::trusted_leader(&seen.value, seen.lease, peers) {
            Ok(rec) => rec,
            Err(e) => {
                self.yielded = None;
                return write(WriteReason::Untrusted(e));
            }
        };
        if rec.term > me.term {
            let y = match self.yielded {
                Some(y) if y.my_term == me.term && y.mod_revision == seen.mod_revision => y,
                _ => {
                    let y = Yielded {
                        my_term: me.term,
                        mod_revision: seen.mod_revision,
                        since: now,
                    };
                    self.yielded = Some(y);
                    y
                }
            };
            if now.saturating_duration_since(y.since) < self.forged_after {
                return LeaderKeyAction::Yield {
                    name: rec.name,
                    term: rec.term,
                };
            }
            self.yielded = None;
            return write(WriteReason::ImpossibleTerm {
                name: rec.name,
                term: rec.term,
            });
        }
        self.yielded = None;
        if rec.name == me.name
            && rec.member_id == me.member_id
            && seen.lease == me.lease
            && rec.term == me.term
        {
            return LeaderKeyAction::Keep;
        }
        write(WriteReason::Outdated {
            name: rec.name,
            term: rec.term,
        })
    }

    /// The lease currently held.
    pub fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// Records a successful Status reporting `role` at `now` (`unix_now` in Unix seconds)
    /// and plans this poll. Returns the role change, if any, for the log.
    pub fn poll(&mut self, role: Role, now: Instant, unix_now: u64) -> (Option<RoleChange>, Plan) {
        let change = (self.role != Some(role)).then(|| {
            let change = RoleChange {
                from: self.role,
                to: role,
            };
            self.role = Some(role);
            self.role_since = unix_now;
            change
        });
        if role != Role::Leader {
            // A leader key confirmed during an earlier term proves nothing about the next.
            self.leader_checked_at = None;
            self.yielded = None;
        }
        let content = NodeKeyWrite {
            role,
            since: self.role_since,
        };
        let put = self.lease.is_none() || self.written_role != Some(role);
        let plan = Plan {
            grant_lease: self.lease.is_none(),
            put_node_key: put.then_some(content),
            check_node_key: (!put
                && self
                    .node_checked_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= NODE_KEY_RECHECK))
            .then_some(content),
            ensure_leader_key: role == Role::Leader
                && (self.lease.is_none()
                    || self
                        .leader_checked_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= LEADER_KEY_RECHECK)),
        };
        (change, plan)
    }

    /// A lease was granted: the keys go on it.
    pub fn lease_granted(&mut self, id: i64) {
        self.lease = Some(id);
        self.written_role = None;
        self.leader_checked_at = None;
        self.node_checked_at = None;
    }

    /// The node key now holds `role` on the current lease (written or read back at `now`).
    pub fn node_key_written(&mut self, role: Role, now: Instant) {
        self.written_role = Some(role);
        self.node_checked_at = Some(now);
    }

    /// The node key was written by somebody (the own-key watch saw it): read it back at the
    /// next poll instead of after [`NODE_KEY_RECHECK`].
    pub fn node_key_changed(&mut self) {
        self.node_checked_at = None;
    }

    /// The leader key was found, or made, this node's on the current lease at `now`.
    pub fn leader_key_confirmed(&mut self, now: Instant) {
        self.leader_checked_at = Some(now);
    }

    /// Lease `id` expired or could not be renewed. If it is the one held, the keys on it are
    /// gone with it and everything is written again on a new lease; returns whether it was.
    pub fn lease_lost(&mut self, id: i64) -> bool {
        if self.lease != Some(id) {
            return false;
        }
        self.lease = None;
        self.written_role = None;
        self.leader_checked_at = None;
        self.node_checked_at = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const T0: u64 = 1_700_000_000;

    fn put(role: Role, since: u64) -> Option<NodeKeyWrite> {
        Some(NodeKeyWrite { role, since })
    }

    /// Plays a poll whose every step succeeds, as the effects loop would.
    fn apply_all(k: &mut Keys, plan: Plan, lease: i64) {
        if plan.grant_lease {
            k.lease_granted(lease);
        }
        if let Some(w) = plan.put_node_key.or(plan.check_node_key) {
            k.node_key_written(w.role, Instant::now());
        }
        if plan.ensure_leader_key {
            k.leader_key_confirmed(Instant::now());
        }
    }

    #[test]
    fn role_is_leader_only_when_the_member_names_itself() {
        assert_eq!(role_of(7, 7), Role::Leader);
        assert_eq!(role_of(8, 7), Role::Follower);
        // No leader at all (lost quorum) reads as follower.
        assert_eq!(role_of(0, 7), Role::Follower);
    }

    #[tokio::test(start_paused = true)]
    async fn first_follower_poll_grants_and_writes_then_rests() {
        let mut k = Keys::new(T0);
        let (change, plan) = k.poll(Role::Follower, Instant::now(), T0 + 1);
        assert_eq!(
            change,
            Some(RoleChange {
                from: None,
                to: Role::Follower
            })
        );
        assert_eq!(
            plan,
            Plan {
                grant_lease: true,
                put_node_key: put(Role::Follower, T0 + 1),
                ensure_leader_key: false,
                check_node_key: None,
            }
        );
        apply_all(&mut k, plan, 1);
        assert_eq!(k.lease(), Some(1));
        advance(Duration::from_millis(200)).await;
        let (change, plan) = k.poll(Role::Follower, Instant::now(), T0 + 2);
        assert_eq!(change, None);
        assert_eq!(plan, Plan::default(), "nothing to do while nothing changes");
    }

    #[tokio::test(start_paused = true)]
    async fn leader_key_is_rechecked_every_two_seconds_not_every_poll() {
        let mut k = Keys::new(T0);
        let (_, plan) = k.poll(Role::Leader, Instant::now(), T0);
        assert!(plan.grant_lease && plan.ensure_leader_key);
        assert_eq!(plan.put_node_key, put(Role::Leader, T0));
        apply_all(&mut k, plan, 1);
        let confirmed = Instant::now();
        let mut checks = Vec::new();
        for _ in 0..25 {
            advance(Duration::from_millis(200)).await;
            let (_, plan) = k.poll(Role::Leader, Instant::now(), T0 + 1);
            assert!(!plan.grant_lease);
            assert_eq!(plan.put_node_key, None);
            if plan.ensure_leader_key {
                checks.push(Instant::now() - confirmed);
            }
            apply_all(&mut k, plan, 1);
        }
        assert_eq!(
            checks,
            [Duration::from_secs(2), Duration::from_secs(4)],
            "one check per LEADER_KEY_RECHECK"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_step_is_planned_again_at_the_next_poll() {
        let mut k = Keys::new(T0);
        // The grant fails: nothing is recorded, the next poll plans the same.
        let (_, first) = k.poll(Role::Leader, Instant::now(), T0);
        advance(Duration::from_millis(200)).await;
        let (_, again) = k.poll(Role::Leader, Instant::now(), T0 + 1);
        assert_eq!(first, again);
        // The grant works, the node key write and the leader key check fail.
        k.lease_granted(5);
        advance(Duration::from_millis(200)).await;
        let (_, plan) = k.poll(Role::Leader, Instant::now(), T0 + 1);
        assert_eq!(
            plan,
            Plan {
                grant_lease: false,
                put_node_key: put(Role::Leader, T0),
                ensure_leader_key: true,
                check_node_key: None,
            }
        );
        // Only the node key succeeds: the leader key is still due at once.
        k.node_key_written(Role::Leader, Instant::now());
        advance(Duration::from_millis(200)).await;
        let (_, plan) = k.poll(Role::Leader, Instant::now(), T0 + 1);
        assert_eq!(plan.put_node_key, None);
        assert!(plan.ensure_leader_key);
    }

    #[tokio::test(start_paused = true)]
    async fn promotion_and_demotion_rewrite_the_node_key_with_a_new_since() {
        let mut k = Keys::new(T0);
        let (_, plan) = k.poll(Role::Follower, Instant::now(), T0);
        apply_all(&mut k, plan, 1);
        advance(Duration::from_secs(30)).await;
        let (change, plan) = k.poll(Role::Leader, Instant::now(), T0 + 30);
        assert_eq!(
            change,
            Some(RoleChange {
                from: Some(Role::Follower),
                to: Role::Leader
            })
        );
        assert_eq!(plan.put_node_key, put(Role::Leader, T0 + 30));
        assert!(plan.ensure_leader_key);
        assert!(!plan.grant_lease);
        apply_all(&mut k, plan, 1);
        advance(Duration::from_millis(200)).await;
        let (_, plan) = k.poll(Role::Follower, Instant::now(), T0 + 31);
        assert_eq!(plan.put_node_key, put(Role::Follower, T0 + 31));
        assert!(
            !plan.ensure_leader_key,
            "a follower never touches the leader key"
        );
        apply_all(&mut k, plan, 1);
        // Leading again half a second later: the earlier confirmation does not count.
        advance(Duration::from_millis(500)).await;
        let (_, plan) = k.poll(Role::Leader, Instant::now(), T0 + 31);
        assert!(plan.ensure_leader_key);
        assert_eq!(plan.put_node_key, put(Role::Leader, T0 + 31));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_means_everything_is_written_again() {
        let mut k = Keys::new(T0);
        let (_, plan) = k.poll(Role::Leader, Instant::now(), T0);
        apply_all(&mut k, plan, 1);
        // A report about an older lease changes nothing.
        assert!(!k.lease_lost(99));
        advance(Duration::from_millis(200)).await;
        assert_eq!(k.poll(Role::Leader, Instant::now(), T0).1, Plan::default());
        assert!(k.lease_lost(1));
        assert_eq!(k.lease(), None);
        advance(Duration::from_millis(200)).await;
        let (change, plan) = k.poll(Role::Leader, Instant::now(), T0 + 1);
        assert_eq!(change, None, "the role did not change, its start stays");
        assert_eq!(
            plan,
            Plan {
                grant_lease: true,
                put_node_key: put(Role::Leader, T0),
                ensure_leader_key: true,
                check_node_key: None,
            }
        );
        apply_all(&mut k, plan, 2);
        assert_eq!(k.lease(), Some(2));
        assert!(!k.lease_lost(1), "the old lease is no longer ours");
    }

    fn peers() -> Vec<Peer> {
        schema::parse_peers("node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12").unwrap()
    }

    const ME: Writer<'static> = Writer {
        name: "node1",
        member_id: "b1",
        lease: 11,
        term: 5,
    };

    fn seen(name: &str, ip: &str, member: &str, term: u64, lease: i64, rev: i64) -> SeenLeaderKey {
        SeenLeaderKey {
            value: serde_json::to_vec(&schema::LeaderRecord {
                name: name.into(),
                ip: ip.into(),
                member_id: member.into(),
                term,
            })
            .unwrap(),
            lease,
            mod_revision: rev,
        }
    }

    fn action(k: &mut Keys, s: Option<&SeenLeaderKey>) -> LeaderKeyAction {
        k.leader_key_action(ME, s, &peers(), Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn own_record_is_kept_and_anything_older_or_untrusted_is_replaced_in_a_txn() {
        let mut k = Keys::new(T0);
        assert_eq!(
            action(&mut k, None),
            LeaderKeyAction::Write {
                expect_mod_revision: 0,
                reason: WriteReason::Absent
            }
        );
        let ours = seen("node1", "10.77.0.11", "b1", 5, 11, 40);
        assert_eq!(action(&mut k, Some(&ours)), LeaderKeyAction::Keep);
        // The previous leader's record (term 4): replaced, only if still at revision 41.
        let old = seen("node0", "10.77.0.10", "a0", 4, 10, 41);
        assert!(matches!(
            action(&mut k, Some(&old)),
            LeaderKeyAction::Write {
                expect_mod_revision: 41,
                reason: WriteReason::Outdated { term: 4, .. }
            }
        ));
        // Ours, but from an older lease or an older term of ours: rewritten.
        for s in [
            seen("node1", "10.77.0.11", "b1", 5, 9, 42),
            seen("node1", "10.77.0.11", "b1", 3, 11, 42),
        ] {
            assert!(matches!(
                action(&mut k, Some(&s)),
                LeaderKeyAction::Write {
                    expect_mod_revision: 42,
                    reason: WriteReason::Outdated { .. }
                }
            ));
        }
        // Forged: lease-less, a stranger, a peer at the gateway's address. Overwritten, even
        // when they claim a higher term.
        for s in [
            seen("node0", "10.77.0.10", "a0", 99, 0, 43),
            seen("evil", "10.77.0.66", "e", 99, 10, 43),
            seen("node0", "10.77.0.5", "a0", 99, 10, 43),
            SeenLeaderKey {
                value: b"garbage".to_vec(),
                lease: 10,
                mod_revision: 43,
            },
        ] {
            assert!(matches!(
                action(&mut k, Some(&s)),
                LeaderKeyAction::Write {
                    expect_mod_revision: 43,
                    reason: WriteReason::Untrusted(_)
                }
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_demoted_leader_leaves_the_newer_leaders_record_alone() {
        // node1 still believes it leads in term 5; node2 won term 6 and wrote its record.
        let mut k = Keys::new(T0).with_election_timeout(Duration::from_secs(1));
        assert_eq!(k.forged_after(), Duration::from_secs(3));
        let newer = seen("node2", "10.77.0.12", "c2", 6, 12, 50);
        assert_eq!(
            action(&mut k, Some(&newer)),
            LeaderKeyAction::Yield {
                name: "node2".into(),
                term: 6
            }
        );
        // Demoted at the next poll: the memory of the yield goes with the leadership.
        advance(Duration::from_millis(200)).await;
        k.poll(Role::Follower, Instant::now(), T0);
        advance(Duration::from_secs(10)).await;
        k.poll(Role::Leader, Instant::now(), T0 + 10);
        assert!(matches!(
            action(&mut k, Some(&newer)),
            LeaderKeyAction::Yield { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_term_that_outlives_several_elections_is_forged_and_overwritten() {
        let mut k = Keys::new(T0).with_election_timeout(Duration::from_secs(1));
        let forged = seen("node2", "10.77.0.12", "c2", 1_000_000, 12, 60);
        assert!(matches!(
            action(&mut k, Some(&forged)),
            LeaderKeyAction::Yield { .. }
        ));
        advance(Duration::from_secs(2)).await;
        assert!(matches!(
            action(&mut k, Some(&forged)),
            LeaderKeyAction::Yield { .. }
        ));
        // Rewritten meanwhile (a new revision): the clock starts again.
        let again = SeenLeaderKey {
            mod_revision: 61,
            ..forged.clone()
        };
        advance(Duration::from_secs(2)).await;
        assert!(matches!(
            action(&mut k, Some(&again)),
            LeaderKeyAction::Yield { .. }
        ));
        advance(Duration::from_secs(3)).await;
        assert!(matches!(
            action(&mut k, Some(&again)),
            LeaderKeyAction::Write {
                expect_mod_revision: 61,
                reason: WriteReason::ImpossibleTerm {
                    term: 1_000_000,
                    ..
                }
            }
        ));
        // The minimum is one recheck interval, whatever the election timeout.
        let k = Keys::new(T0).with_election_timeout(Duration::from_millis(100));
        assert_eq!(k.forged_after(), LEADER_KEY_RECHECK);
    }

    #[tokio::test(start_paused = true)]
    async fn the_node_key_is_read_back_periodically_and_when_written() {
        let mut k = Keys::new(T0);
        let (_, plan) = k.poll(Role::Follower, Instant::now(), T0);
        assert_eq!(plan.check_node_key, None, "written now, not checked");
        apply_all(&mut k, plan, 1);
        let mut checks = Vec::new();
        let start = Instant::now();
        let polls = 2 * NODE_KEY_RECHECK.as_millis() / 200 + 1;
        for _ in 0..polls {
            advance(Duration::from_millis(200)).await;
            let (_, plan) = k.poll(Role::Follower, Instant::now(), T0 + 1);
            assert_eq!(plan.put_node_key, None);
            if let Some(w) = plan.check_node_key {
                assert_eq!(
                    w,
                    NodeKeyWrite {
                        role: Role::Follower,
                        since: T0
                    }
                );
                checks.push(Instant::now() - start);
            }
            apply_all(&mut k, plan, 1);
        }
        assert_eq!(checks, [NODE_KEY_RECHECK, 2 * NODE_KEY_RECHECK]);
        // A write seen by the own-key watch makes the read-back due at once.
        advance(Duration::from_millis(200)).await;
        assert_eq!(
            k.poll(Role::Follower, Instant::now(), T0 + 1)
                .1
                .check_node_key,
            None
        );
        k.node_key_changed();
        let (_, plan) = k.poll(Role::Follower, Instant::now(), T0 + 1);
        assert!(plan.check_node_key.is_some(), "{plan:?}");
        apply_all(&mut k, plan, 1);
        // A failed read-back is due again at the next poll.
        advance(NODE_KEY_RECHECK).await;
        assert!(k
            .poll(Role::Follower, Instant::now(), T0 + 5)
            .1
            .check_node_key
            .is_some());
        advance(Duration::from_millis(200)).await;
        assert!(k
            .poll(Role::Follower, Instant::now(), T0 + 5)
            .1
            .check_node_key
            .is_some());
    }
}

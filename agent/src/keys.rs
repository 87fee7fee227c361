//! The decisions of the node's key loop, apart from their effects.
//!
//! Every `leader_poll_ms` the agent asks its own etcd member for Status. From what that
//! says (this member leads, or another does), what the agent holds (a lease, the role last
//! written into the node key, when the leader key was last confirmed) and the time, [`Keys`]
//! decides what this poll does, in this order:
//! 1. grant a lease when none is held (nothing else happens this poll if that fails);
//! 2. write `/clusterlab/nodes/<name>` when it does not hold the current role yet;
//! 3. while leading, check `/clusterlab/leader` and rewrite it if it is not this node's on
//!    this lease, at most every [`LEADER_KEY_RECHECK`].
//!
//! The effects (etcd calls, the health status, logs) are in [`crate::node`]; they report
//! back what succeeded through [`Keys::lease_granted`], [`Keys::node_key_written`],
//! [`Keys::leader_key_confirmed`] and [`Keys::lease_lost`], so a failed step is simply
//! planned again at the next poll.

use clusterlab_core::schema::Role;
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
}

impl Keys {
    /// A loop that has seen nothing yet; `unix_now` stands as the role's start until the
    /// first Status.
    pub fn new(unix_now: u64) -> Keys {
        Keys {
            role_since: unix_now,
            ..Keys::default()
        }
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
        }
        let plan = Plan {
            grant_lease: self.lease.is_none(),
            put_node_key: (self.lease.is_none() || self.written_role != Some(role)).then_some(
                NodeKeyWrite {
                    role,
                    since: self.role_since,
                },
            ),
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
    }

    /// The node key now holds `role` on the current lease.
    pub fn node_key_written(&mut self, role: Role) {
        self.written_role = Some(role);
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
        if let Some(w) = plan.put_node_key {
            k.node_key_written(w.role);
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
            }
        );
        // Only the node key succeeds: the leader key is still due at once.
        k.node_key_written(Role::Leader);
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
            }
        );
        apply_all(&mut k, plan, 2);
        assert_eq!(k.lease(), Some(2));
        assert!(!k.lease_lost(1), "the old lease is no longer ours");
    }
}

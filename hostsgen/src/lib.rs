//! hostsgen: keeps every node's /etc/hosts identical and current from etcd, with the leader
//! as `host0`, and the leader's copy of the block in the shared volume.
//!
//! # Layout
//! - [`commands`]: what each subcommand does (main.rs only parses arguments).
//! - [`render`]: pure functions: cluster view → table → block, and splicing a block into an
//!   existing hosts file without touching Docker's lines.
//! - [`offline`]: the JSON cluster description read by `hostsgen render --from-json`.
//! - [`write`]: the two writers: /etc/hosts in place (it is a bind mount), the shared copy by
//!   temp file + rename.
//! - [`watch`]: the etcd side: linearizable snapshot of `/clusterlab/`, watch from the next
//!   revision, resync with backoff, last good table kept while etcd cannot answer; a guard
//!   that restores a deleted or edited block in /etc/hosts (file events, slow poll).

pub mod commands;
pub mod offline;
pub mod render;
pub mod watch;
pub mod write;

pub use render::{render, replace_block};

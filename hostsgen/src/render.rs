//! Pure rendering: a cluster view becomes the clusterlab block of a hosts file, and a block is
//! spliced into an existing hosts file without touching the lines around it.
//!
//! Naming rule: `host0` is the leader — the live node that `/clusterlab/leader` names — and
//! the other live nodes follow as `host1`, `host2`, … in ascending numeric IP order (so
//! 10.77.0.9 comes before 10.77.0.10). The node name stays on every line as a stable alias.
//!
//! When the leader key names no live node (bootstrap before the first leader key, or a
//! leader record whose node key is gone), there is no `host0` line at all: every live node is
//! listed as a follower from `host1` on. `host0` then resolves to nothing instead of to a
//! guess, and follower numbering does not depend on whether a leader is known.

use clusterlab_core::hosts::{is_marker, render_block};
use clusterlab_core::schema::{is_valid_label, ClusterView};
use std::net::Ipv4Addr;

/// The block's line, markers, reader and parser are clusterlab-core's; re-exported here
/// under the names hostsgen has always given them.
pub use clusterlab_core::hosts::{extract_block, parse_block, HostEntry, BEGIN, END};

/// The table a view renders to, plus what was refused on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Lines in output order: the leader (host0) first if known, then followers by IP.
    pub entries: Vec<HostEntry>,
    /// Name of the node shown as host0, if any.
    pub leader: Option<String>,
    /// Names refused by the last-line guard (escaped for logging); normally empty because
    /// [`ClusterView`] already validates names.
    pub rejected: Vec<String>,
}

impl Table {
    /// A one-line summary for logs: `host0=node2 host1=node0 …`.
    pub fn summary(&self) -> String {
        if self.entries.is_empty() {
            return "(no live nodes)".into();
        }
        self.entries
            .iter()
            .map(|e| format!("host{}={}", e.index, e.name))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Builds the table for a view. Names that are not hostname labels are refused here again,
/// whatever the view says, because a name holding a space or newline would inject text into
/// every node's /etc/hosts.
pub fn table(view: &ClusterView) -> Table {
    let mut rejected = Vec::new();
    let mut live: Vec<(Ipv4Addr, &str)> = Vec::with_capacity(view.nodes.len());
    for m in &view.nodes {
        if is_valid_label(&m.name) {
            live.push((m.ip, m.name.as_str()));
        } else {
            rejected.push(format!("{:?}", m.name));
        }
    }
    // The view sorts by IP already; sorting here keeps the rule true for any view a caller
    // builds by hand. Name breaks ties so equal inputs always give the same block.
    live.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    // A name is listed once even if a hand-built view repeats it (etcd keys cannot).
    let mut seen = std::collections::HashSet::new();
    live.retain(|(_, name)| seen.insert(*name));

    let leader_name = view.leader.as_ref().map(|l| l.name.as_str());
    let leader = leader_name.and_then(|n| live.iter().find(|(_, name)| *name == n).copied());

    let mut entries = Vec::with_capacity(live.len());
    if let Some((ip, name)) = leader {
        entries.push(HostEntry {
            ip,
            index: 0,
            name: name.to_string(),
        });
    }
    for (ip, name) in live.iter().filter(|(_, n)| Some(*n) != leader.map(|l| l.1)) {
        entries.push(HostEntry {
            ip: *ip,
            index: entries.len() + usize::from(leader.is_none()),
            name: name.to_string(),
        });
    }
    Table {
        entries,
        leader: leader.map(|(_, n)| n.to_string()),
        rejected,
    }
}

/// The block for a table, BEGIN and END lines included, ending with a newline.
pub fn render_table(t: &Table) -> String {
    // `table` only lets labels through; checked once more at the point of writing so no
    // caller can ever produce a line with whitespace in a name.
    render_block(t.entries.iter().filter(|e| is_valid_label(&e.name)))
}

/// The block for a view: [`table`] then [`render_table`].
pub fn render(view: &ClusterView) -> String {
    render_table(&table(view))
}

/// Returns `existing_hosts` with its clusterlab block replaced by `block`, or with `block`
/// appended if it has none. Every line outside BEGIN … END (Docker's own lines) is kept
/// byte for byte and in order.
///
/// A BEGIN with no END after it is taken to run to the end of the file: clusterlab always
/// appends its block last, so such a tail can only be a block whose write was cut short.
/// Extra blocks (which clusterlab never writes) are dropped; the new block takes the place of
/// the first. Applying the same block twice gives the same text as applying it once.
pub fn replace_block(existing_hosts: &str, block: &str) -> String {
    let mut block = block.to_string();
    if !block.ends_with('\n') {
        block.push('\n');
    }
    let mut out = String::with_capacity(existing_hosts.len() + block.len());
    let mut inserted = false;
    let mut in_block = false;
    for line in existing_hosts.split_inclusive('\n') {
        if in_block {
            if is_marker(line, END) {
                in_block = false;
            }
            continue;
        }
        if is_marker(line, BEGIN) {
            in_block = true;
            if !inserted {
                // The line before a BEGIN line always ended with '\n' (split_inclusive).
                out.push_str(&block);
                inserted = true;
            }
            continue;
        }
        out.push_str(line);
    }
    if !inserted {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterlab_core::schema::{LeaderRecord, Member, Role};
    use proptest::prelude::*;

    fn member(name: &str, ip: &str) -> Member {
        Member {
            name: name.into(),
            ip: ip.parse().unwrap(),
            role: Role::Follower,
            member_id: "1".into(),
        }
    }

    fn view(nodes: &[(&str, &str)], leader: Option<&str>) -> ClusterView {
        ClusterView {
            nodes: nodes.iter().map(|(n, ip)| member(n, ip)).collect(),
            leader: leader.map(|n| LeaderRecord {
                name: n.into(),
                ip: "10.0.0.1".into(),
                member_id: "1".into(),
                term: 1,
            }),
        }
    }

    const DOCKER: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
        fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
        ff02::2\tip6-allrouters\n10.77.0.11\tnode1\n";

    #[test]
    fn design_example() {
        let v = view(
            &[
                ("node0", "10.77.0.10"),
                ("node1", "10.77.0.11"),
                ("node2", "10.77.0.12"),
            ],
            Some("node2"),
        );
        assert_eq!(
            render(&v),
            "# BEGIN clusterlab\n10.77.0.12 host0 node2\n10.77.0.10 host1 node0\n\
             10.77.0.11 host2 node1\n# END clusterlab\n"
        );
    }

    #[test]
    fn numeric_ip_order_not_lexical() {
        let v = view(
            &[
                ("b", "10.77.0.10"),
                ("a", "10.77.0.9"),
                ("c", "10.77.0.100"),
                ("d", "9.0.0.1"),
            ],
            Some("c"),
        );
        let t = table(&v);
        let names: Vec<_> = t.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["c", "d", "a", "b"]);
        let idx: Vec<_> = t.entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, [0, 1, 2, 3]);
        assert_eq!(t.leader.as_deref(), Some("c"));
    }

    #[test]
    fn no_ten_node_limit() {
        let nodes: Vec<(String, String)> = (0..25)
            .map(|i| (format!("node{i}"), format!("10.77.0.{}", 10 + i)))
            .collect();
        let refs: Vec<(&str, &str)> = nodes
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let out = render(&view(&refs, Some("node0")));
        assert!(out.contains("10.77.0.34 host24 node24\n"), "{out}");
        assert!(out.contains("10.77.0.20 host10 node10\n"), "{out}");
        assert_eq!(out.lines().count(), 27);
    }

    #[test]
    fn leader_not_live_means_no_host0() {
        let v = view(
            &[("node0", "10.0.0.10"), ("node1", "10.0.0.11")],
            Some("gone"),
        );
        assert_eq!(
            render(&v),
            "# BEGIN clusterlab\n10.0.0.10 host1 node0\n10.0.0.11 host2 node1\n# END clusterlab\n"
        );
        let v = view(&[("node0", "10.0.0.10")], None);
        assert_eq!(table(&v).leader, None);
        assert_eq!(table(&v).entries[0].index, 1);
    }

    #[test]
    fn empty_view_renders_empty_block() {
        assert_eq!(
            render(&ClusterView::default()),
            "# BEGIN clusterlab\n# END clusterlab\n"
        );
    }

    #[test]
    fn guard_refuses_names_that_could_inject_lines() {
        let v = view(
            &[
                ("good", "10.0.0.1"),
                ("evil\n10.6.6.6 bank", "10.0.0.2"),
                ("sp ace", "10.0.0.3"),
                ("", "10.0.0.4"),
            ],
            Some("evil\n10.6.6.6 bank"),
        );
        let t = table(&v);
        assert_eq!(t.rejected.len(), 3, "{:?}", t.rejected);
        assert_eq!(t.leader, None);
        assert_eq!(
            render(&v),
            "# BEGIN clusterlab\n10.0.0.1 host1 good\n# END clusterlab\n"
        );
        // Even a hand-built table cannot smuggle a bad name through the renderer.
        let bad = Table {
            entries: vec![HostEntry {
                ip: "10.0.0.2".parse().unwrap(),
                index: 1,
                name: "x\ny".into(),
            }],
            ..Table::default()
        };
        assert_eq!(render_table(&bad), "# BEGIN clusterlab\n# END clusterlab\n");
    }

    #[test]
    fn views_from_etcd_values_skip_bad_entries() {
        let good =
            br#"{"name":"node0","ip":"10.0.0.10","role":"follower","member_id":"a","since":1}"#;
        let bad =
            br#"{"name":"a\nb","ip":"10.0.0.11","role":"follower","member_id":"a","since":1}"#;
        let leader = br#"{"name":"node0","ip":"10.0.0.10","member_id":"a"}"#;
        let (v, errors) = ClusterView::from_records([
            ("/clusterlab/nodes/node0", &good[..]),
            ("/clusterlab/nodes/a\nb", &bad[..]),
            ("/clusterlab/leader", &leader[..]),
        ]);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            render(&v),
            "# BEGIN clusterlab\n10.0.0.10 host0 node0\n# END clusterlab\n"
        );
    }

    #[test]
    fn appends_to_docker_file_then_replaces_in_place() {
        let b1 = "# BEGIN clusterlab\n10.0.0.1 host0 a\n# END clusterlab\n";
        let b2 = "# BEGIN clusterlab\n10.0.0.2 host0 b\n# END clusterlab\n";
        let once = replace_block(DOCKER, b1);
        assert_eq!(once, format!("{DOCKER}{b1}"));
        let twice = replace_block(&once, b2);
        assert_eq!(twice, format!("{DOCKER}{b2}"));
        // Docker lines after our block stay after it.
        let mixed = format!("{DOCKER}{b1}10.9.9.9\tlate\n");
        assert_eq!(
            replace_block(&mixed, b2),
            format!("{DOCKER}{b2}10.9.9.9\tlate\n")
        );
    }

    #[test]
    fn missing_final_newline_and_unterminated_block() {
        let b = "# BEGIN clusterlab\n10.0.0.1 host0 a\n# END clusterlab\n";
        assert_eq!(
            replace_block("127.0.0.1 localhost", b),
            format!("127.0.0.1 localhost\n{b}")
        );
        let cut = "127.0.0.1 localhost\n# BEGIN clusterlab\n10.0.0.7 ho";
        assert_eq!(replace_block(cut, b), format!("127.0.0.1 localhost\n{b}"));
        assert_eq!(replace_block("", b), b);
        // A block without its final newline is completed.
        assert_eq!(replace_block("x\n", b.trim_end()), format!("x\n{b}"));
    }

    #[test]
    fn duplicate_blocks_collapse_into_one() {
        let b = "# BEGIN clusterlab\n10.0.0.1 host0 a\n# END clusterlab\n";
        let twice = format!("a\n{b}b\n{b}c\n");
        assert_eq!(replace_block(&twice, b), format!("a\n{b}b\nc\n"));
    }

    #[test]
    fn extract_and_parse() {
        let b = "# BEGIN clusterlab\n10.0.0.1 host0 a\n10.0.0.2 host1 b\n# END clusterlab\n";
        let f = format!("{DOCKER}{b}");
        assert_eq!(extract_block(&f).as_deref(), Some(b));
        assert_eq!(extract_block(DOCKER), None);
        assert_eq!(extract_block("# BEGIN clusterlab\n1.2.3.4 x y\n"), None);
        let rows = parse_block(b).unwrap();
        assert_eq!(
            rows[1],
            HostEntry {
                ip: "10.0.0.2".parse().unwrap(),
                index: 1,
                name: "b".into()
            }
        );
        assert!(parse_block("# BEGIN clusterlab\n10.0.0.1 host0\n# END clusterlab\n").is_err());
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,10}[a-z0-9]"
    }

    fn nodes() -> impl Strategy<Value = Vec<(String, Ipv4Addr)>> {
        prop::collection::btree_map(label(), any::<u32>(), 0..30).prop_map(|m| {
            m.into_iter()
                .map(|(n, ip)| (n, Ipv4Addr::from(ip)))
                .collect()
        })
    }

    fn make_view(nodes: &[(String, Ipv4Addr)], leader: Option<usize>) -> ClusterView {
        let mut members: Vec<Member> = nodes
            .iter()
            .map(|(n, ip)| Member {
                name: n.clone(),
                ip: *ip,
                role: Role::Follower,
                member_id: "1".into(),
            })
            .collect();
        // Callers may hand over any order; the renderer must not depend on it.
        members.reverse();
        ClusterView {
            leader: leader
                .and_then(|i| nodes.get(i))
                .map(|(n, ip)| LeaderRecord {
                    name: n.clone(),
                    ip: ip.to_string(),
                    member_id: "1".into(),
                    term: 1,
                }),
            nodes: members,
        }
    }

    /// Any line Docker or an admin might have put in /etc/hosts, markers excluded.
    fn other_line() -> impl Strategy<Value = String> {
        "[ -~\t]{0,40}".prop_filter("not a marker", |l| {
            !is_marker(l, BEGIN) && !is_marker(l, END)
        })
    }

    proptest! {
        #[test]
        fn prop_leader_first_then_followers_by_ip(ns in nodes(), pick in any::<prop::sample::Index>()) {
            let leader = (!ns.is_empty()).then(|| pick.index(ns.len()));
            let t = table(&make_view(&ns, leader));
            prop_assert_eq!(t.entries.len(), ns.len());
            let mut seen: Vec<&str> = t.entries.iter().map(|e| e.name.as_str()).collect();
            seen.sort();
            seen.dedup();
            prop_assert_eq!(seen.len(), ns.len(), "each live node exactly once");
            for (i, e) in t.entries.iter().enumerate() {
                prop_assert_eq!(e.index, i);
            }
            if let Some(l) = leader {
                prop_assert_eq!(&t.entries[0].name, &ns[l].0);
            }
            let followers = &t.entries[usize::from(leader.is_some())..];
            for w in followers.windows(2) {
                prop_assert!((w[0].ip, &w[0].name) <= (w[1].ip, &w[1].name));
            }
        }

        #[test]
        fn prop_every_line_is_ip_alias_name(ns in nodes(), leader in prop::option::of(0usize..30)) {
            let out = render(&make_view(&ns, leader));
            let lines: Vec<&str> = out.lines().collect();
            prop_assert_eq!(lines[0], BEGIN);
            prop_assert_eq!(lines[lines.len() - 1], END);
            let rows = parse_block(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(rows.len(), ns.len());
            for (i, e) in rows.iter().enumerate() {
                prop_assert_eq!(e.index, i + usize::from(leader.is_none_or(|l| l >= ns.len())));
                prop_assert!(is_valid_label(&e.name));
            }
        }

        #[test]
        fn prop_bad_names_never_reach_the_block(
            good in nodes(),
            bad in prop::collection::vec(
                "[ -~\n\t]{0,12}".prop_filter("not a label", |b| !is_valid_label(b)),
                1..5,
            ),
        ) {
            let mut v = make_view(&good, Some(0));
            for (i, b) in bad.iter().enumerate() {
                v.nodes.push(Member {
                    name: b.clone(),
                    ip: Ipv4Addr::new(10, 9, 9, i as u8),
                    role: Role::Follower,
                    member_id: "1".into(),
                });
            }
            let out = render(&v);
            prop_assert_eq!(out.lines().count(), good.len() + 2);
            for line in out.lines().skip(1) {
                if line == END { continue; }
                prop_assert_eq!(line.split(' ').count(), 3, "line {:?}", line);
            }
        }

        #[test]
        fn prop_rewrite_is_idempotent_and_keeps_other_lines(
            before in prop::collection::vec(other_line(), 0..8),
            after in prop::collection::vec(other_line(), 0..4),
            old in nodes(),
            new in nodes(),
        ) {
            let old_block = render(&make_view(&old, Some(0)));
            let new_block = render(&make_view(&new, None));
            let docker: String = before.iter().map(|l| format!("{l}\n")).collect();
            let tail: String = after.iter().map(|l| format!("{l}\n")).collect();

            // A fresh Docker file: block appended, Docker's text untouched as a prefix.
            let first = replace_block(&docker, &old_block);
            prop_assert_eq!(&first, &format!("{docker}{old_block}"));
            // Replacing in a file with lines on both sides keeps both sides.
            let existing = format!("{docker}{old_block}{tail}");
            let once = replace_block(&existing, &new_block);
            prop_assert_eq!(&once, &format!("{docker}{new_block}{tail}"));
            prop_assert_eq!(replace_block(&once, &new_block), once.clone());
            prop_assert_eq!(extract_block(&once), Some(new_block.clone()));
        }
    }
}

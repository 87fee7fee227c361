//! The clusterlab block of a hosts file: the one shape clusterlab writes outside etcd that
//! several programs read (hostsgen writes it into /etc/hosts and /shared/hosts; sshkeys reads
//! it for known_hosts aliases; the proxy can follow `host0` in it; the harness compares it).
//!
//! ```text
//! # BEGIN clusterlab
//! 10.77.0.12 host0 node2
//! 10.77.0.10 host1 node0
//! # END clusterlab
//! ```
//!
//! This module holds the markers, the reader of the block ([`block_lines`]), the one parser of
//! a line ([`HostsLine::parse`], with the strict form [`HostEntry::parse`] on top of it) and
//! the one renderer ([`HostEntry`]'s `Display` and [`render_block`]).

use crate::schema::is_valid_label;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// First line of the clusterlab block in a hosts file.
pub const BEGIN: &str = "# BEGIN clusterlab";
/// Last line of the clusterlab block in a hosts file.
pub const END: &str = "# END clusterlab";

/// True when `line` is the marker `marker`, give or take surrounding whitespace.
pub fn is_marker(line: &str, marker: &str) -> bool {
    line.trim() == marker
}

/// The lines of a hosts file's clusterlab block, between the markers and trimmed, if the
/// block is complete (`None` while it is missing or unterminated). A second BEGIN before the
/// END starts the block again: only a BEGIN … END run with no marker inside counts.
pub fn block_lines(text: &str) -> Option<Vec<&str>> {
    let mut block: Option<Vec<&str>> = None;
    for line in text.lines() {
        if is_marker(line, BEGIN) {
            block = Some(Vec::new());
        } else if is_marker(line, END) {
            if block.is_some() {
                return block;
            }
        } else if let Some(b) = block.as_mut() {
            b.push(line.trim());
        }
    }
    None
}

/// The clusterlab block of a hosts file, BEGIN and END lines included and every line trimmed,
/// if it has a complete one.
pub fn extract_block(hosts: &str) -> Option<String> {
    block_lines(hosts).map(render_block)
}

/// A block: BEGIN, one line per item, END, each ending with a newline.
pub fn render_block<I>(lines: I) -> String
where
    I: IntoIterator,
    I::Item: fmt::Display,
{
    let mut out = format!("{BEGIN}\n");
    for line in lines {
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// Why a line of the block is not a hosts line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostsLineError {
    #[error("hosts line {line:?}: {addr:?} is not an IP address")]
    BadAddress { line: String, addr: String },
    #[error("hosts line {line:?}: an address with no names")]
    NoNames { line: String },
    #[error("hosts line {line:?}: {addr} is not an IPv4 address")]
    NotIpv4 { line: String, addr: IpAddr },
    #[error("hosts line {line:?}: expected `<ip> host<N> <name>` and nothing else")]
    NotAnEntry { line: String },
    #[error("hosts line {line:?}: {alias:?} is not of the form host<N>")]
    BadAlias { line: String, alias: String },
    #[error("hosts line {line:?}: {name:?} is not a hostname label")]
    BadName { line: String, name: String },
}

/// One line of a hosts file as read: an address, its names, and a trailing `#` comment.
///
/// This is the lenient reading that every reader starts from; each applies its own rules on
/// top (sshkeys wants IPv4 and hostname labels only, hostsgen wants exactly
/// [`HostEntry`]'s shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsLine<'a> {
    pub ip: IpAddr,
    /// The words after the address, up to a word that starts a comment.
    pub names: Vec<&'a str>,
    /// The comment from its `#` on, if the line has one.
    pub comment: Option<&'a str>,
}

impl<'a> HostsLine<'a> {
    /// Parses one line. `Ok(None)` for a blank line or a line that is only a comment (the
    /// writer's padding is such a line); an error for an address that does not parse or
    /// stands alone.
    pub fn parse(line: &'a str) -> Result<Option<HostsLine<'a>>, HostsLineError> {
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            return Ok(None);
        }
        let mut words = text.split_whitespace();
        let addr = words.next().unwrap_or_default();
        let ip = addr
            .parse::<IpAddr>()
            .map_err(|_| HostsLineError::BadAddress {
                line: line.into(),
                addr: addr.into(),
            })?;
        let names: Vec<&str> = words.take_while(|w| !w.starts_with('#')).collect();
        let comment = text.find('#').map(|i| &text[i..]);
        if names.is_empty() {
            return Err(HostsLineError::NoNames { line: line.into() });
        }
        Ok(Some(HostsLine { ip, names, comment }))
    }

    /// The address if it is IPv4.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match self.ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
}

/// One line of the block as hostsgen writes it: `<ip> host<index> <name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub ip: Ipv4Addr,
    /// The `hostN` alias; 0 is the leader.
    pub index: usize,
    pub name: String,
}

impl HostEntry {
    /// The `hostN` alias of this entry.
    pub fn alias(&self) -> String {
        format!("host{}", self.index)
    }

    /// Parses a line that must be exactly what [`HostEntry`]'s `Display` writes (whitespace
    /// aside): an IPv4 address, `host<N>` and a hostname label, no comment.
    pub fn parse(line: &str) -> Result<HostEntry, HostsLineError> {
        let not_entry = || HostsLineError::NotAnEntry { line: line.into() };
        let parsed = HostsLine::parse(line)?.ok_or_else(not_entry)?;
        let ip = parsed.ipv4().ok_or(HostsLineError::NotIpv4 {
            line: line.into(),
            addr: parsed.ip,
        })?;
        let [alias, name] = parsed.names[..] else {
            return Err(not_entry());
        };
        if parsed.comment.is_some() {
            return Err(not_entry());
        }
        let index = parse_alias(alias).ok_or_else(|| HostsLineError::BadAlias {
            line: line.into(),
            alias: alias.into(),
        })?;
        if !is_valid_label(name) {
            return Err(HostsLineError::BadName {
                line: line.into(),
                name: name.into(),
            });
        }
        Ok(HostEntry {
            ip,
            index,
            name: name.into(),
        })
    }
}

/// The `N` of `host<N>`, written as the renderer writes it (decimal, no sign, no leading
/// zero).
pub fn parse_alias(alias: &str) -> Option<usize> {
    let digits = alias.strip_prefix("host")?;
    let n: usize = digits.parse().ok()?;
    (n.to_string() == digits).then_some(n)
}

impl fmt::Display for HostEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} host{} {}", self.ip, self.index, self.name)
    }
}

/// The entries of a block (marker lines skipped), each parsed by [`HostEntry::parse`]; the
/// first line that is not an entry is an error, so a malformed block is never mistaken for a
/// good one.
pub fn parse_block(block: &str) -> Result<Vec<HostEntry>, HostsLineError> {
    block
        .lines()
        .filter(|l| !is_marker(l, BEGIN) && !is_marker(l, END))
        .map(HostEntry::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn block_is_read_between_markers() {
        let text = "127.0.0.1 localhost\n# BEGIN clusterlab\n10.77.0.12 host0 node2\n\
                    10.77.0.10 host1 node0  \n  # END clusterlab\n::1 x\n";
        assert_eq!(
            block_lines(text).unwrap(),
            ["10.77.0.12 host0 node2", "10.77.0.10 host1 node0"]
        );
        assert_eq!(block_lines("# BEGIN clusterlab\n10.0.0.1 host0 a\n"), None);
        assert_eq!(block_lines("10.0.0.1 host0 a\n# END clusterlab\n"), None);
        assert_eq!(
            block_lines("# BEGIN clusterlab\n# END clusterlab\n"),
            Some(vec![])
        );
        // A stray BEGIN above the real block does not swallow the lines between.
        assert_eq!(
            block_lines(
                "# BEGIN clusterlab\n10.0.0.9 host0 old\n# BEGIN clusterlab\n10.0.0.1 host0 a\n# END clusterlab\n"
            ),
            Some(vec!["10.0.0.1 host0 a"])
        );
    }

    #[test]
    fn extract_normalizes_the_block() {
        let f = "127.0.0.1 localhost\n# BEGIN clusterlab  \n  10.0.0.1 host0 a\n# END clusterlab\n";
        assert_eq!(
            extract_block(f).as_deref(),
            Some("# BEGIN clusterlab\n10.0.0.1 host0 a\n# END clusterlab\n")
        );
        assert_eq!(extract_block("127.0.0.1 localhost\n"), None);
    }

    #[test]
    fn lenient_line_keeps_address_names_and_comment() {
        let l = HostsLine::parse("  10.0.0.5\thost5 node5 # note  ")
            .unwrap()
            .unwrap();
        assert_eq!(l.ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(l.names, ["host5", "node5"]);
        assert_eq!(l.comment, Some("# note"));
        assert_eq!(l.ipv4(), Some(Ipv4Addr::new(10, 0, 0, 5)));
        let v6 = HostsLine::parse("::1 localhost").unwrap().unwrap();
        assert_eq!(v6.ipv4(), None);
        assert_eq!(HostsLine::parse("   ").unwrap(), None);
        assert_eq!(HostsLine::parse("# padding ####").unwrap(), None);
        assert!(matches!(
            HostsLine::parse("300.0.0.1 host2"),
            Err(HostsLineError::BadAddress { addr, .. }) if addr == "300.0.0.1"
        ));
        assert!(matches!(
            HostsLine::parse("10.0.0.4 # only a comment"),
            Err(HostsLineError::NoNames { .. })
        ));
    }

    #[test]
    fn strict_entry_accepts_only_the_rendered_shape() {
        let e = HostEntry::parse("10.0.0.2  host1\tb").unwrap();
        assert_eq!(
            e,
            HostEntry {
                ip: Ipv4Addr::new(10, 0, 0, 2),
                index: 1,
                name: "b".into()
            }
        );
        assert_eq!(e.alias(), "host1");
        let err = |l: &str| HostEntry::parse(l).unwrap_err();
        assert!(matches!(
            err("10.0.0.1 host0"),
            HostsLineError::NotAnEntry { .. }
        ));
        assert!(matches!(
            err("10.0.0.1 host0 a b"),
            HostsLineError::NotAnEntry { .. }
        ));
        assert!(matches!(
            err("10.0.0.1 host0 a # c"),
            HostsLineError::NotAnEntry { .. }
        ));
        assert!(matches!(err(""), HostsLineError::NotAnEntry { .. }));
        assert!(matches!(err("::1 host0 a"), HostsLineError::NotIpv4 { .. }));
        assert!(matches!(
            err("x host0 a"),
            HostsLineError::BadAddress { .. }
        ));
        for alias in ["hostx", "host", "host01", "host+1", "node0"] {
            assert!(
                matches!(
                    err(&format!("10.0.0.1 {alias} a")),
                    HostsLineError::BadAlias { .. }
                ),
                "{alias}"
            );
        }
        assert!(matches!(
            err("10.0.0.1 host0 -a"),
            HostsLineError::BadName { .. }
        ));
        // The error names the line.
        assert!(err("10.0.0.1 host0").to_string().contains("10.0.0.1 host0"));
    }

    #[test]
    fn block_parse_skips_markers_and_rejects_the_rest() {
        let b = "# BEGIN clusterlab\n10.0.0.1 host0 a\n10.0.0.2 host1 b\n# END clusterlab\n";
        let rows = parse_block(b).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].to_string(), "10.0.0.2 host1 b");
        assert!(parse_block("# BEGIN clusterlab\n10.0.0.1 host0\n# END clusterlab\n").is_err());
        assert_eq!(render_block(&rows), b);
        assert_eq!(
            render_block(Vec::<HostEntry>::new()),
            "# BEGIN clusterlab\n# END clusterlab\n"
        );
    }

    fn entry() -> impl Strategy<Value = HostEntry> {
        (
            any::<u32>(),
            0usize..10_000,
            "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        )
            .prop_map(|(ip, index, name)| HostEntry {
                ip: Ipv4Addr::from(ip),
                index,
                name,
            })
    }

    proptest! {
        #[test]
        fn prop_entry_round_trips(e in entry()) {
            let line = e.to_string();
            prop_assert_eq!(HostEntry::parse(&line), Ok(e.clone()));
            // The lenient reading sees the same address and names.
            let l = HostsLine::parse(&line).unwrap().unwrap();
            prop_assert_eq!(l.ip, IpAddr::V4(e.ip));
            let alias = e.alias();
            prop_assert_eq!(l.names, vec![alias.as_str(), e.name.as_str()]);
            prop_assert_eq!(l.comment, None);
        }

        #[test]
        fn prop_block_round_trips(es in prop::collection::vec(entry(), 0..20)) {
            let block = render_block(&es);
            prop_assert_eq!(parse_block(&block), Ok(es.clone()));
            prop_assert_eq!(extract_block(&format!("127.0.0.1 localhost\n{block}")), Some(block.clone()));
            let lines = block_lines(&block).unwrap();
            prop_assert_eq!(lines.len(), es.len());
        }
    }
}

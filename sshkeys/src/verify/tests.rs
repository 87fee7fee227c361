//! Tests of the verifier against an in-process russh server on 127.0.0.1:0, one per outcome.

use super::*;
use crate::scan::Published;
use russh::keys::Algorithm;
use russh::server::{self, Auth, Msg, Server as _, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};

fn new_key() -> PrivateKey {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
}

/// A tiny SSH server: accepts one user with one key and answers `hostname` with `name`.
#[derive(Clone)]
struct TestServer {
    user: String,
    allowed: PublicKey,
    name: String,
}

impl server::Server for TestServer {
    type Handler = Self;
    fn new_client(&mut self, _: Option<SocketAddr>) -> Self {
        self.clone()
    }
}

impl server::Handler for TestServer {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let _ = offer;
        if user == self.user {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if user == self.user && same_key(key.public_key, &self.allowed) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        if data == b"hostname" {
            session.data(channel, format!("{}\n", self.name).into_bytes())?;
            session.exit_status_request(channel, 0)?;
        } else {
            session.exit_status_request(channel, 127)?;
        }
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

/// Starts a server; returns its address. It runs until the test's runtime ends.
async fn serve(host_key: PrivateKey, user_key: &PrivateKey, name: &str) -> SocketAddr {
    let config = Arc::new(server::Config {
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut srv = TestServer {
        user: "admin".into(),
        allowed: user_key.public_key().clone(),
        name: name.into(),
    };
    tokio::spawn(async move {
        let running = srv.run_on_socket(config, &listener);
        let _ = running.await;
    });
    addr
}

fn target(name: &str, addr: SocketAddr, expected: &PrivateKey) -> Target {
    Target {
        name: name.into(),
        addr: Some(addr),
        expected: Some(expected.public_key().clone()),
        unknown: None,
    }
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn ok_when_host_key_login_and_hostname_all_match() {
    let (host, user) = (new_key(), new_key());
    let addr = serve(host.clone(), &user, "node1").await;
    let r = check(&target("node1", addr, &host), "admin", Arc::new(user), T).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.hostname.as_deref(), Some("node1"));
    assert_eq!(r.reason, None);
}

#[tokio::test]
async fn a_different_host_key_is_a_mismatch_not_a_prompt() {
    let (host, user, other) = (new_key(), new_key(), new_key());
    let addr = serve(host.clone(), &user, "node1").await;
    let r = check(&target("node1", addr, &other), "admin", Arc::new(user), T).await;
    assert_eq!(r.reason, Some(FailReason::HostKeyMismatch), "{r:?}");
    assert!(r.detail.contains(&fingerprint(host.public_key())), "{r:?}");
    assert!(r.detail.contains(&fingerprint(other.public_key())), "{r:?}");
}

#[tokio::test]
async fn an_unknown_user_key_is_refused() {
    let (host, user, stranger) = (new_key(), new_key(), new_key());
    let addr = serve(host.clone(), &user, "node1").await;
    let r = check(
        &target("node1", addr, &host),
        "admin",
        Arc::new(stranger),
        T,
    )
    .await;
    assert_eq!(r.reason, Some(FailReason::LoginRefused), "{r:?}");
    // The right key for the wrong user is refused too.
    let r = check(&target("node1", addr, &host), "root", Arc::new(user), T).await;
    assert_eq!(r.reason, Some(FailReason::LoginRefused), "{r:?}");
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let host = new_key();
    let r = check(
        &target("node1", addr, &host),
        "admin",
        Arc::new(new_key()),
        T,
    )
    .await;
    assert_eq!(r.reason, Some(FailReason::Unreachable), "{r:?}");
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_deadline() {
    // Accepts TCP and then says nothing, like a hung sshd.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let host = new_key();
    let timeout = Duration::from_millis(400);
    let r = check(
        &target("node1", addr, &host),
        "admin",
        Arc::new(new_key()),
        timeout,
    )
    .await;
    assert_eq!(r.reason, Some(FailReason::Timeout), "{r:?}");
    assert!(r.elapsed_ms < 2000, "{r:?}");
}

#[tokio::test]
async fn another_hostname_is_reported() {
    let (host, user) = (new_key(), new_key());
    let addr = serve(host.clone(), &user, "node9").await;
    let r = check(&target("node1", addr, &host), "admin", Arc::new(user), T).await;
    assert_eq!(r.reason, Some(FailReason::WrongHostname), "{r:?}");
    assert_eq!(r.hostname.as_deref(), Some("node9"));
}

#[tokio::test]
async fn without_a_published_key_nothing_is_trusted() {
    let (host, user) = (new_key(), new_key());
    let addr = serve(host.clone(), &user, "node1").await;
    let mut t = target("node1", addr, &host);
    t.expected = None;
    let r = check(&t, "admin", Arc::new(user), T).await;
    assert_eq!(r.reason, Some(FailReason::NoHostKey), "{r:?}");
}

#[tokio::test]
async fn check_all_reports_each_target_and_the_report_fails_if_any_fails() {
    let (host, user) = (new_key(), new_key());
    let addr = serve(host.clone(), &user, "node1").await;
    let good = target("node1", addr, &host);
    let bad = target("node1", addr, &new_key());
    let results = check_all(&[good, bad], "admin", Arc::new(user), T).await;
    assert!(results[0].ok && !results[1].ok);
    let report = Report::new("node0", results);
    assert!(!report.ok);
    let text = report.to_text();
    assert!(text.contains("1 passed, 1 failed"), "{text}");
    assert!(text.contains("host key mismatch"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["results"][1]["reason"], "host_key_mismatch");
    assert_eq!(json["ok"], false);
    assert!(!Report::new("node0", vec![]).ok, "no targets is not a pass");
}

fn scan_with(names: &[&str]) -> Scan {
    Scan {
        keys: names
            .iter()
            .map(|n| Published {
                name: n.to_string(),
                key: new_key().public_key().clone(),
            })
            .collect(),
        refused: vec![],
    }
}

#[test]
fn resolve_covers_peers_published_keys_aliases_and_addresses() {
    let peers = clusterlab_core::config::parse_peers("node0=10.77.0.10,node1=10.77.0.11").unwrap();
    let hosts = scan_with(&["node1", "node5"]);
    let block = crate::assemble::parse_hosts_block(
        "# BEGIN clusterlab\n10.77.0.11 host0 node1\n10.77.0.10 host1 node0\n\
         10.77.0.15 host2 node5\n# END clusterlab\n",
    );
    let all = resolve(&Selection::All, &peers, &hosts, &block, 22);
    let names: Vec<_> = all.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["node0", "node1", "node5"]);
    assert!(all[0].expected.is_none(), "node0 published nothing");
    assert_eq!(all[2].addr, Some("10.77.0.15:22".parse().unwrap()));

    let picked = resolve(
        &Selection::To(vec![
            "host0".into(),
            "10.77.0.10".into(),
            "node5".into(),
            "ghost".into(),
        ]),
        &peers,
        &hosts,
        &block,
        2222,
    );
    assert_eq!(picked[0].name, "node1");
    assert_eq!(picked[0].addr, Some("10.77.0.11:2222".parse().unwrap()));
    assert_eq!(picked[1].name, "node0");
    assert_eq!(picked[2].name, "node5");
    assert!(picked[3].unknown.is_some());
}

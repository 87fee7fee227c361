//! Images with no registry: the base image from Debian packages (mmdebstrap, or debootstrap
//! and apt inside the new root, then import), the node root (the base minus what a node never
//! runs) and the node image (node root + the workspace's binaries), tagged by content hashes so
//! an unchanged tree is not rebuilt.
//!
//! The workspace binaries are built on the host and copied in, so they must run on the
//! image's C library. The base image is made from the host's own Debian release when the host
//! is Debian, and every node image is smoke-tested (each binary's shared libraries resolve and
//! `agent --version` runs) before it is used; see README "Images".

use crate::cluster::{ClusterObjects, ContainerRole, ContainerSpec};
use crate::docker::{ctx, HarnessError, Result};
use crate::progress::Step;
use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, LogsOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Repository of the node image (with the default prefix); the tag is a content hash.
pub const NODE_REPO: &str = "clusterlab-node";
/// Repository of the base image made from Debian packages (with the default prefix); the tag
/// is the Debian suite.
pub const BASE_REPO: &str = "clusterlab-base";
/// The default prefix of the image repositories (`<prefix>-base`, `<prefix>-node`).
pub const DEFAULT_IMAGE_PREFIX: &str = "clusterlab";
/// Environment variable naming another prefix, e.g. to time a first run without touching the
/// images everybody else uses.
pub const IMAGE_PREFIX_ENV: &str = "CLUSTERLAB_IMAGE_PREFIX";
/// Environment variable naming the cargo profile of the node binaries (default: the profile
/// the running harness was built in, so its compiled dependencies are reused; `node` gives a
/// debug harness optimised nodes).
pub const NODE_PROFILE_ENV: &str = "CLUSTERLAB_NODE_PROFILE";
/// The optimised profile of the node binaries (Cargo.toml `[profile.node]`): what
/// [`ImageOptions::optimised_nodes`] (every benchmark) builds them in.
pub const BIN_PROFILE: &str = "node";
/// The workspace programs of the node image: links (in `/usr/local/bin`) to [`NODE_EXE`].
pub const NODE_BINARIES: [&str; 4] = ["agent", "hostsgen", "sshkeys", "proxy"];
/// The node image's one executable (package and binary `clusterlab-node`, `node/`), which runs
/// the program named by the link it is started through.
pub const NODE_EXE: &str = "clusterlab-node";
/// Debian packages installed into the base image.
pub const BASE_PACKAGES: [&str; 10] = [
    "etcd-server",
    "etcd-client",
    "openssh-server",
    "openssh-client",
    "iproute2",
    "iptables",
    "ca-certificates",
    "procps",
    "python3",
    "curl",
];
/// The script that trims the base image into the node root (see [`ensure_node_root`]),
/// relative to the workspace.
pub const NODE_ROOT_SCRIPT: &str = "images/node/root.sh";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to build and from where.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Root of the clusterlab workspace (holds Cargo.toml and images/).
    pub workspace: PathBuf,
    /// A base image to use if it exists locally (e.g. `debian:bookworm-slim`); when absent,
    /// `clusterlab-base:<suite>` is made from Debian packages.
    pub base_image: Option<String>,
    /// Debian suite of the base image.
    pub suite: String,
    /// Debian mirror for debootstrap (default: the host's apt sources, else deb.debian.org).
    pub mirror: Option<String>,
    /// Rebuild even when an image with the right tag exists.
    pub rebuild: bool,
    /// Prefix of the image repositories: `<prefix>-base:<suite>`, `<prefix>-node:<hash>`.
    pub prefix: String,
    /// Build the node binaries in the optimised [`BIN_PROFILE`] whatever the harness was
    /// built in and whatever [`NODE_PROFILE_ENV`] says (benchmarks measure optimised code);
    /// otherwise they share the harness's profile (see [`BinBuild::for_workspace`]).
    pub optimised_nodes: bool,
}

impl ImageOptions {
    /// Defaults for this workspace: the host's Debian suite (or bookworm) and mirror.
    pub fn for_workspace(workspace: PathBuf) -> Self {
        ImageOptions {
            workspace,
            base_image: None,
            suite: host_debian_suite().unwrap_or_else(|| "bookworm".into()),
            mirror: None,
            rebuild: false,
            optimised_nodes: false,
            prefix: std::env::var(IMAGE_PREFIX_ENV)
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_IMAGE_PREFIX.into()),
        }
    }

    /// Where and in which profile the node binaries are built for these options.
    pub fn bin_build(&self) -> BinBuild {
        let build = BinBuild::for_workspace(&self.workspace);
        if self.optimised_nodes {
            build.optimised()
        } else {
            build
        }
    }

    /// Repository of the base image.
    pub fn base_repo(&self) -> String {
        format!("{}-base", self.prefix)
    }

    /// Repository of the node image.
    pub fn node_repo(&self) -> String {
        format!("{}-node", self.prefix)
    }

    /// Repository of the node root (the base image trimmed by `images/node/root.sh`), which
    /// the node image is built on.
    pub fn node_root_repo(&self) -> String {
        format!("{}-node-root", self.prefix)
    }

    /// The prefix must make valid Docker repository names.
    pub fn check_prefix(&self) -> Result<()> {
        check_image_prefix(&self.prefix).map_err(|reason| HarnessError::BadSpec {
            field: format!("image prefix {:?} ({IMAGE_PREFIX_ENV})", self.prefix),
            reason,
        })
    }
}

/// A prefix for Docker repository names: lower-case letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit, at most 100 characters.
pub fn check_image_prefix(prefix: &str) -> std::result::Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c);
    if prefix.is_empty() || prefix.len() > 100 {
        return Err("must be 1 to 100 characters".into());
    }
    if !prefix.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err("must start with a lower-case letter or a digit".into());
    }
    if let Some(c) = prefix.chars().find(|c| !ok_char(*c)) {
        return Err(format!(
            "{c:?} is not allowed (lower-case letters, digits, '.', '_' and '-' only)"
        ));
    }
    Ok(())
}

/// The images a cluster runs.
#[derive(Debug, Clone)]
pub struct Images {
    pub base: String,
    pub node: String,
}

/// The workspace this harness was built from.
pub fn default_workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// The host's Debian codename, if the host is Debian.
pub fn host_debian_suite() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    parse_os_release_suite(&text)
}

/// Extracts VERSION_CODENAME from an os-release text when ID is debian.
pub fn parse_os_release_suite(text: &str) -> Option<String> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    (get("ID").as_deref() == Some("debian"))
        .then(|| get("VERSION_CODENAME"))
        .flatten()
        .filter(|s| !s.is_empty())
}

/// Finds a Debian archive URI in apt sources (one-line or deb822 format).
pub fn parse_debian_mirror(sources: &str) -> Option<String> {
    for line in sources.lines().map(str::trim) {
        let candidates: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().collect()
        } else if let Some(rest) = line.strip_prefix("deb ") {
            rest.split_whitespace()
                .filter(|w| !w.starts_with('['))
                .take(1)
                .collect()
        } else {
            continue;
        };
        for uri in candidates {
            let uri = uri.trim_end_matches('/');
            if (uri.starts_with("http://") || uri.starts_with("https://"))
                && uri.ends_with("/debian")
            {
                return Some(uri.to_string());
            }
        }
    }
    None
}

fn host_mirror() -> String {
    let mut text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            text.push('\n');
            text.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
    }
    parse_debian_mirror(&text).unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// True when an image with this name exists locally.
pub async fn image_exists(docker: &Docker, name: &str) -> Result<bool> {
    match docker.inspect_image(name).await {
        Ok(_) => Ok(true),
        Err(e) if crate::docker::is_not_found(&e) => Ok(false),
        Err(e) => ctx(format!("inspecting image {name}"), Err(e)),
    }
}

/// Makes sure the base and node images exist, building what is missing. The base image and
/// the node root are made while cargo builds the node binaries (the one mostly network and
/// disk, the other CPU), so all that is left after the compile is copying the binaries in.
pub async fn ensure_images(docker: &Docker, opts: &ImageOptions) -> Result<Images> {
    opts.check_prefix()?;
    let build = opts.bin_build();
    let ((base, root), bin_dir) = tokio::try_join!(
        ensure_base_and_root(docker, opts),
        build_binaries(&opts.workspace, &build)
    )?;
    let node = node_image(docker, opts, &root, &bin_dir).await?;
    Ok(Images { base, node })
}

/// The node root for `base`: the base image minus what a node never runs
/// (`images/node/root.sh`), as one imported layer, tagged `<prefix>-node-root:<hash of the
/// base image's id and the script>` and made when missing. The script runs in a throw-away
/// container of the base; the container's file system is exported straight into the import
/// (no build stages, no copy of the root through the builder).
pub async fn ensure_node_root(
    docker: &Docker,
    opts: &ImageOptions,
    base: &str,
) -> Result<String, HarnessError> {
    let plan = NodeRootPlan::load(docker, opts, base).await?;
    let tag = plan.tag.clone();
    if !opts.rebuild && image_exists(docker, &tag).await? {
        return Ok(tag);
    }
    let step = Step::start(format!(
        "making the node root {tag} from {base} ({NODE_ROOT_SCRIPT})"
    ));
    let (code, out) = oneshot(docker, base, &plan.script, Some((&tag, plan.changes))).await?;
    if code != 0 {
        return Err(HarnessError::ImageBuild {
            what: format!("node root {tag} ({NODE_ROOT_SCRIPT} exited with {code})"),
            output: last_lines(&out, 15),
        });
    }
    step.done();
    prune_node_images(docker, &opts.node_root_repo(), &tag, 1).await;
    Ok(tag)
}

/// What the node root of a base image is made of, and its tag.
struct NodeRootPlan {
    script: String,
    /// `docker import` changes: the node image's settings come with its root, so its
    /// Dockerfile is one copy (each Dockerfile step costs the builder a container and a commit).
    changes: Vec<String>,
    tag: String,
}

impl NodeRootPlan {
    async fn load(docker: &Docker, opts: &ImageOptions, base: &str) -> Result<NodeRootPlan> {
        let script_path = opts.workspace.join(NODE_ROOT_SCRIPT);
        let script = std::fs::read_to_string(&script_path).map_err(|source| HarnessError::Io {
            what: format!("reading {}", script_path.display()),
            source,
        })?;
        let base_id = ctx(
            format!("inspecting base image {base}"),
            docker.inspect_image(base).await,
        )?
        .id
        .unwrap_or_default();
        let changes = vec![
            format!("ENV {PATH_ENV}"),
            "EXPOSE 22 2379 2380 8008 8888".to_string(),
            "ENTRYPOINT [\"/usr/local/bin/agent\"]".to_string(),
            "LABEL clusterlab.image=node-root".to_string(),
        ];
        let tag = format!(
            "{}:{}",
            opts.node_root_repo(),
            node_root_hash(&base_id, &script, &changes)
        );
        Ok(NodeRootPlan {
            script,
            changes,
            tag,
        })
    }
}

/// The base image and its node root, each made when missing. When the base is made here, the
/// node root is made from the same new root folder right after the base's import (the trim
/// run in a chroot, a second import), without a container or an export.
pub async fn ensure_base_and_root(
    docker: &Docker,
    opts: &ImageOptions,
) -> Result<(String, String), HarnessError> {
    let (base, missing) = base_to_use(docker, opts).await?;
    if missing {
        if let Some(root) = build_base(docker, opts, &base, true).await? {
            return Ok((base, root));
        }
    }
    let root = ensure_node_root(docker, opts, &base).await?;
    Ok((base, root))
}

/// The node root's tag: a hash of the base image's id, the script that trims it and the
/// image settings it is imported with.
fn node_root_hash(base_id: &str, script: &str, changes: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [base_id, script]
        .into_iter()
        .chain(changes.iter().map(String::as_str))
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The base image: the configured one if present locally, else `clusterlab-base:<suite>`,
/// made from Debian packages when missing.
pub async fn ensure_base(docker: &Docker, opts: &ImageOptions) -> Result<String, HarnessError> {
    let (base, missing) = base_to_use(docker, opts).await?;
    if missing {
        build_base(docker, opts, &base, false).await?;
    }
    Ok(base)
}

/// The base image to use, and whether it has to be made from Debian packages.
async fn base_to_use(docker: &Docker, opts: &ImageOptions) -> Result<(String, bool), HarnessError> {
    opts.check_prefix()?;
    let base_repo = opts.base_repo();
    if let Some(configured) = &opts.base_image {
        if image_exists(docker, configured).await? {
            return Ok((configured.clone(), false));
        }
        eprintln!(
            "note: base image {configured} is not present locally and cannot be pulled here; making {base_repo}:{} from Debian packages instead",
            opts.suite
        );
    }
    let name = format!("{base_repo}:{}", opts.suite);
    if !opts.rebuild && image_exists(docker, &name).await? {
        return Ok((name, false));
    }
    Ok((name, true))
}

/// Makes the base image `name` from Debian packages and, with `and_root`, its node root from
/// the same folder; returns the node root's tag when it was asked for.
async fn build_base(
    docker: &Docker,
    opts: &ImageOptions,
    name: &str,
    and_root: bool,
) -> Result<Option<String>> {
    check_base_prerequisites()?;
    let mirror = opts.mirror.clone().unwrap_or_else(host_mirror);
    let guard = BuildDir::create(Path::new(BUILD_PARENT))?;
    let root = guard.root.clone();

    let r = root.display().to_string();
    let step = if which("mmdebstrap") {
        mmdebstrap(opts, &mirror, &r).await?
    } else {
        debootstrap(opts, &mirror, &root).await?
    };
    run_logged(
        &step,
        "sh",
        &[
            "-c",
            // Trim: docs, man pages, locales, apt lists and caches; no baked-in host keys
            // (each node makes its own and keeps it on its volume).
            &format!(
                "set -e; R='{r}'; \
                 rm -rf \"$R\"/usr/share/doc/* \"$R\"/usr/share/man/* \"$R\"/usr/share/info/* \
                        \"$R\"/var/lib/apt/lists/* \"$R\"/var/cache/apt/*.bin \"$R\"/var/cache/apt/archives/*.deb \
                        \"$R\"/var/log/*.log \"$R\"/etc/ssh/ssh_host_* \"$R/usr/sbin/policy-rc.d\"; \
                 find \"$R/usr/share/locale\" -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {{}} +; \
                 rm -f \"$R/etc/resolv.conf\"; : > \"$R/etc/resolv.conf\""
            ),
        ],
    )
    .await?;
    step.done();

    let step = Step::start(format!("importing the root as {name}"));
    import_dir(docker, &step, &r, name, vec![format!("ENV {PATH_ENV}")]).await?;
    step.done();
    if !and_root {
        drop(guard);
        return Ok(None);
    }
    let plan = NodeRootPlan::load(docker, opts, name).await?;
    if !opts.rebuild && image_exists(docker, &plan.tag).await? {
        drop(guard);
        return Ok(Some(plan.tag));
    }
    let step = Step::start(format!(
        "making the node root {} in the new root ({NODE_ROOT_SCRIPT}) and importing it",
        plan.tag
    ));
    run_logged(&step, "chroot", &[&r, "/bin/sh", "-c", &plan.script]).await?;
    import_dir(docker, &step, &r, &plan.tag, plan.changes).await?;
    step.done();
    prune_node_images(docker, &opts.node_root_repo(), &plan.tag, 1).await;
    drop(guard);
    Ok(Some(plan.tag))
}

/// Imports the folder `dir` (a root file system, as tar streams it) as the image `name`
/// (`repo:tag`), applying `changes` (`docker import --change`).
async fn import_dir(
    docker: &Docker,
    step: &Step,
    dir: &str,
    name: &str,
    changes: Vec<String>,
) -> Result<()> {
    let mut tar = tokio::process::Command::new("tar")
        .args(["-C", dir, "--numeric-owner", "-cf", "-", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HarnessError::Io {
            what: "starting tar".into(),
            source,
        })?;
    let stdout = tar.stdout.take().ok_or_else(|| HarnessError::Io {
        what: "reading tar's output".into(),
        source: std::io::Error::other("tar has no stdout"),
    })?;
    import_stream(docker, Some(step), tokio_util_reader(stdout), name, changes).await?;
    let status = tar.wait().await.map_err(|source| HarnessError::Io {
        what: "waiting for tar".into(),
        source,
    })?;
    if !status.success() {
        return Err(HarnessError::CommandFailed {
            command: "tar of the new root".into(),
            status: status.to_string(),
            output: String::new(),
        });
    }
    Ok(())
}

/// One step: the base root at `root` made by mmdebstrap (minbase, merged /usr, the base
/// packages), in one apt run with dpkg's unsafe I/O (the root is thrown away on failure) and
/// without the documentation dpkg would unpack only to have it removed.
async fn mmdebstrap(opts: &ImageOptions, mirror: &str, root: &str) -> Result<Step> {
    let step = Step::start(format!(
        "mmdebstrap {} (minbase) with {} from {mirror}",
        opts.suite,
        BASE_PACKAGES.join(" ")
    ));
    let include = format!("--include={}", BASE_PACKAGES.join(","));
    let mut args = vec![
        "--mode=root",
        "--variant=minbase",
        include.as_str(),
        "--dpkgopt=force-unsafe-io",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        // Translations: the trim keeps only C.* locales.
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/locale/C.*",
    ];
    // Without the hook, bookworm's mmdebstrap merges /usr with the usrmerge package, which
    // brings Perl along; debootstrap's root has usr-is-merged instead.
    let hook = "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr";
    if Path::new(hook.trim_start_matches("--hook-dir=")).is_dir() {
        args.push(hook);
    }
    args.extend([opts.suite.as_str(), root, mirror]);
    run_logged(&step, "mmdebstrap", &args).await?;
    Ok(step)
}

/// Two steps (without mmdebstrap): debootstrap, then the base packages installed with apt in
/// the new root.
async fn debootstrap(opts: &ImageOptions, mirror: &str, root: &Path) -> Result<Step> {
    let step = Step::start(format!(
        "debootstrap {} (minbase) from {mirror}",
        opts.suite
    ));
    run_logged(
        &step,
        "debootstrap",
        &[
            "--variant=minbase",
            &opts.suite,
            &root.display().to_string(),
            mirror,
        ],
    )
    .await?;
    step.done();

    let step = Step::start(format!(
        "installing {} into the new root",
        BASE_PACKAGES.join(" ")
    ));
    // The new root's files are written afresh, never through a link the packages made.
    if let Ok(resolv) = std::fs::read_to_string("/etc/resolv.conf") {
        write(&root.join("etc/resolv.conf"), &resolv, 0o644)?;
    }
    // Services must not start inside the chroot.
    write(
        &root.join("usr/sbin/policy-rc.d"),
        "#!/bin/sh\nexit 101\n",
        0o755,
    )?;
    run_logged(
        &step,
        "mount",
        &[
            "-t",
            "proc",
            "proc",
            &root.join("proc").display().to_string(),
        ],
    )
    .await?;
    let r = root.display().to_string();
    run_logged(&step, "chroot", &[&r, "apt-get", "update"]).await?;
    let mut args = vec![
        r.as_str(),
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
    ];
    args.extend(BASE_PACKAGES);
    run_logged(&step, "chroot", &args).await?;
    run_logged(&step, "umount", &[&format!("{r}/proc")]).await?;
    Ok(step)
}

fn tokio_util_reader(
    r: tokio::process::ChildStdout,
) -> impl futures::Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>> {
    futures::stream::unfold(r, |mut r| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    })
}

/// Where base images are built: a folder in /var/tmp (room for a whole Debian root, which
/// /tmp, often a small tmpfs, may not have).
const BUILD_PARENT: &str = "/var/tmp";

/// A fresh private folder for one base image build: an unpredictable name, created
/// exclusively with mode 0700 (so nobody else can plant anything in it), holding the new root
/// at `root/` (mode 0755: it becomes the image's `/`). Dropping it removes it safely, even
/// when a step failed: see [`remove_build_dir`].
#[derive(Debug)]
struct BuildDir {
    dir: PathBuf,
    root: PathBuf,
}

impl BuildDir {
    fn create(parent: &Path) -> Result<BuildDir> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |what: String| move |source| HarnessError::Io { what, source };
        let dir = tempfile::Builder::new()
            .prefix("clusterlab-rootfs-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(io(format!(
                "creating a private build folder in {}",
                parent.display()
            )))?
            .keep();
        let root = dir.join("root");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&root)
            .map_err(io(format!("creating {}", root.display())))?;
        Ok(BuildDir { dir, root })
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if let Err(e) = remove_build_dir(&self.dir) {
            tracing::warn!(error = %e, "the base image's build folder was left in place");
            eprintln!("warning: {e}");
        }
    }
}

/// The mount points in `mountinfo` (the text of /proc/self/mountinfo) at or below `dir`,
/// deepest first.
fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// A mount point as mountinfo writes it: space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(p: &str) -> String {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a build folder without ever leaving it: whatever is mounted below it (the chroot's
/// /proc) is unmounted first, and if something stays mounted nothing is removed; the removal
/// itself (`std::fs::remove_dir_all`) deletes symbolic links and never follows them.
fn remove_build_dir(dir: &Path) -> std::result::Result<(), String> {
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| mounts_below(&t, dir))
            .map_err(|e| {
                format!(
                    "cannot read /proc/self/mountinfo to check {}: {e}",
                    dir.display()
                )
            })
    };
    for m in mounted()? {
        let _ = std::process::Command::new("umount")
            .arg(&m)
            .stderr(Stdio::null())
            .status();
    }
    let left = mounted()?;
    if !left.is_empty() {
        return Err(format!(
            "{} still has mounts below it ({}); not removing it",
            dir.display(),
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

/// Writes `text` to a new file at `path` with `mode`: whatever is at `path` (a link the new
/// root's packages made, say) is removed first, and the file is created exclusively, never
/// through a link.
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| HarnessError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        // O_CREAT | O_EXCL: fails on anything at the path, a link included.
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

fn check_base_prerequisites() -> Result<()> {
    let found = |prog: &str| which(prog) || Path::new("/usr/sbin").join(prog).is_file();
    if !found("mmdebstrap") && !found("debootstrap") {
        return Err(HarnessError::ToolMissing {
            program: "mmdebstrap (or debootstrap)",
            package: "mmdebstrap",
        });
    }
    for (prog, pkg) in [("chroot", "coreutils"), ("tar", "tar")] {
        if !found(prog) {
            return Err(HarnessError::ToolMissing {
                program: prog,
                package: pkg,
            });
        }
    }
    if !nix_is_root() {
        return Err(HarnessError::NeedsRoot);
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command, showing its output lines as step details; on failure the error carries
/// the last lines of output.
///
/// The base image's commands run at a lower CPU priority (`nice -n 5`): they wait partly on the
/// network and the disk, and the node build beside them should get the larger share of the
/// CPU. Measured on a first run (2 cores): at 19 mmdebstrap took 60 s beside a 50 s node
/// build, at 10 64 s beside 57 s, at 5 64 s beside 62 s (the two ending closest together).
async fn run_logged(step: &Step, prog: &str, args: &[&str]) -> Result<()> {
    let path = PATH_ENV.trim_start_matches("PATH=");
    let mut cmd = if which("nice") {
        let mut c = tokio::process::Command::new("nice");
        c.args(["-n", "5", prog]);
        c
    } else {
        tokio::process::Command::new(prog)
    };
    cmd.args(args).env("PATH", path);
    run_captured(step, cmd, &format!("{prog} {}", args.join(" ")), 15).await
}

/// Runs `cmd` (shown as `display`) with its output as step details; on failure the error
/// carries its last `keep` lines.
async fn run_captured(
    step: &Step,
    mut cmd: tokio::process::Command,
    display: &str,
    keep: usize,
) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HarnessError::Io {
            what: format!("starting {display}"),
            source,
        })?;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let out = child.stdout.take().map(|s| BufReader::new(s).lines());
    let err = child.stderr.take().map(|s| BufReader::new(s).lines());
    let (mut out, mut err) = (out, err);
    loop {
        let line = tokio::select! {
            l = async { match out.as_mut() { Some(o) => o.next_line().await, None => std::future::pending().await } } => match l {
                Ok(Some(l)) => Some(l),
                _ => { out = None; None }
            },
            l = async { match err.as_mut() { Some(e) => e.next_line().await, None => std::future::pending().await } } => match l {
                Ok(Some(l)) => Some(l),
                _ => { err = None; None }
            },
        };
        if let Some(l) = line {
            step.detail(&l);
            tail.push_back(l);
            if tail.len() > keep {
                tail.pop_front();
            }
        }
        if out.is_none() && err.is_none() {
            break;
        }
    }
    let status = child.wait().await.map_err(|source| HarnessError::Io {
        what: format!("waiting for {display}"),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(HarnessError::CommandFailed {
            command: display.to_string(),
            status: status.to_string(),
            output: tail.into_iter().collect::<Vec<_>>().join("\n"),
        })
    }
}

/// Where and how the node binaries are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinBuild {
    /// The cargo target dir.
    pub target_dir: PathBuf,
    /// The cargo profile (`dev`, `release` or one of the workspace Cargo.toml's).
    pub profile: String,
}

impl BinBuild {
    /// For the node image of `workspace`: the target dir and profile the running harness was
    /// built in, `dev` for `cargo run` and the trials (so cargo reuses the dependencies it
    /// compiled for the harness: see ARCHITECTURE.md "One compile");
    /// `CLUSTERLAB_NODE_PROFILE` names another profile (`node`: optimised). A harness that
    /// does not run from a cargo target dir of this workspace (installed elsewhere, or given
    /// another `--workspace`) builds in that workspace's target dir, in `dev`.
    pub fn for_workspace(workspace: &Path) -> BinBuild {
        let own = std::env::current_exe()
            .ok()
            .and_then(|exe| cargo_output_of(&exe))
            .filter(|_| same_dir(workspace, &default_workspace()));
        let (target_dir, profile) = own.unwrap_or_else(|| {
            let target = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => workspace.join("target"),
            };
            (target, "dev".to_string())
        });
        BinBuild {
            target_dir,
            profile: node_profile(&profile, std::env::var(NODE_PROFILE_ENV).ok().as_deref()),
        }
    }

    /// The same target dir, in the optimised [`BIN_PROFILE`] (a no-op when already there).
    pub fn optimised(self) -> BinBuild {
        BinBuild {
            profile: BIN_PROFILE.to_string(),
            ..self
        }
    }

    /// True when the binaries are built unoptimised but for the dependencies Cargo.toml's
    /// `[profile.dev.package.*]` optimise (`dev`, `test`).
    pub fn is_debug(&self) -> bool {
        matches!(self.profile.as_str(), "dev" | "test")
    }

    /// The folder cargo puts this profile's binaries in.
    pub fn out_dir(&self) -> PathBuf {
        let dir = match self.profile.as_str() {
            "dev" | "test" => "debug",
            "bench" => "release",
            other => other,
        };
        self.target_dir.join(dir)
    }
}

/// The node binaries' profile: `harness`'s own (so its compiled dependencies are reused),
/// unless `env` ([`NODE_PROFILE_ENV`]) names one.
fn node_profile(harness: &str, env: Option<&str>) -> String {
    env.map(str::trim)
        .filter(|p| !p.is_empty())
        .unwrap_or(harness)
        .to_string()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The cargo target dir and profile of an executable cargo built: `<target>/<profile dir>/NAME`
/// or, for a test, `<target>/<profile dir>/deps/NAME`, where `<target>` holds cargo's
/// CACHEDIR.TAG. `debug` is the `dev` profile.
pub fn cargo_output_of(exe: &Path) -> Option<(PathBuf, String)> {
    let mut dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir = dir.parent()?;
    }
    let profile_dir = dir.file_name()?.to_str()?;
    let target = dir.parent()?;
    if !target.join("CACHEDIR.TAG").is_file() {
        return None;
    }
    let profile = match profile_dir {
        "debug" => "dev",
        other => other,
    };
    Some((target.to_path_buf(), profile.to_string()))
}

/// Builds the workspace binaries for the image as `build` says (see
/// [`ImageOptions::bin_build`]) and returns the folder of their stripped copies.
pub async fn build_binaries(workspace: &Path, build: &BinBuild) -> Result<PathBuf> {
    let step = Step::start(format!(
        "building {NODE_EXE} ({}) for the node image (cargo profile {}{}, {})",
        NODE_BINARIES.join(", "),
        build.profile,
        if build.is_debug() {
            ": the harness's dependencies"
        } else {
            ""
        },
        build.target_dir.display()
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = tokio::process::Command::new(&cargo);
    cmd.current_dir(workspace)
        .args(["build", "--profile", &build.profile, "-p", NODE_EXE])
        .args(["--bin", NODE_EXE])
        .arg("--target-dir")
        .arg(&build.target_dir);
    let display = format!(
        "{cargo} build --profile {} -p {NODE_EXE} --bin {NODE_EXE} (in {})",
        build.profile,
        workspace.display()
    );
    run_captured(&step, cmd, &display, 60).await?;
    let stripped = strip_binaries(build).await?;
    step.done();
    Ok(stripped)
}

/// Copies the node executable without its symbol table and debug information (a node logs
/// its errors; nobody runs a debugger in it) into `<target>/node-image-bin/<profile>/`, where
/// the image's build context is read from, next to links named after its programs. Without a
/// `strip` program (binutils) it is copied as it is.
async fn strip_binaries(build: &BinBuild) -> Result<PathBuf> {
    let dest = build.target_dir.join("node-image-bin").join(&build.profile);
    let io = |what: String| move |source| HarnessError::Io { what, source };
    std::fs::create_dir_all(&dest).map_err(io(format!("creating {}", dest.display())))?;
    let src = build.out_dir().join(NODE_EXE);
    let tmp = dest.join(format!(".{NODE_EXE}.{}", std::process::id()));
    let stripped = which("strip")
        && tokio::process::Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&tmp)
            .arg(&src)
            .stdin(Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
    if !stripped {
        std::fs::copy(&src, &tmp).map_err(io(format!(
            "copying {} to {}",
            src.display(),
            tmp.display()
        )))?;
    }
    let exe = dest.join(NODE_EXE);
    std::fs::rename(&tmp, &exe).map_err(io(format!(
        "moving {} to {}",
        tmp.display(),
        exe.display()
    )))?;
    // The programs by name, as in the image (`harness bench proxy` runs `proxy` from here).
    for b in NODE_BINARIES {
        let link = dest.join(b);
        if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(NODE_EXE)) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(NODE_EXE, &link)
                .map_err(io(format!("linking {} to {NODE_EXE}", link.display())))?;
        }
    }
    Ok(dest)
}

/// The node image's build context: Dockerfile, default config and binaries.
pub struct NodeContext {
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Symbolic links: (path in the context, target).
    pub links: Vec<(String, String)>,
}

impl NodeContext {
    /// Reads the context from the workspace and the built binaries.
    pub fn load(workspace: &Path, bin_dir: &Path) -> Result<NodeContext> {
        let read = |p: PathBuf| {
            std::fs::read(&p).map_err(|source| HarnessError::Io {
                what: format!("reading {}", p.display()),
                source,
            })
        };
        let mut files = vec![
            (
                "Dockerfile".to_string(),
                read(workspace.join("images/node/Dockerfile"))?,
                0o644,
            ),
            (
                "root/etc/clusterlab/clusterlab.toml".to_string(),
                read(workspace.join("images/node/clusterlab.toml"))?,
                0o644,
            ),
        ];
        files.push((
            format!("root/usr/local/bin/{NODE_EXE}"),
            read(bin_dir.join(NODE_EXE))?,
            0o755,
        ));
        // The programs, as links copied with the executable.
        let links = NODE_BINARIES
            .iter()
            .map(|b| (format!("root/usr/local/bin/{b}"), NODE_EXE.to_string()))
            .collect();
        Ok(NodeContext { files, links })
    }

    /// Content hash over every file and the base image id: the node image's tag.
    pub fn hash(&self, base_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(base_id.as_bytes());
        for (name, data, mode) in &self.files {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(mode.to_le_bytes());
            h.update((data.len() as u64).to_le_bytes());
            h.update(data);
        }
        for (name, target) in &self.links {
            h.update(b"link\0");
            h.update(name.as_bytes());
            h.update([0]);
            h.update(target.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())[..16].to_string()
    }

    /// The context as a tar archive.
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, mode) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(0);
            header.set_cksum();
            b.append_data(&mut header, name, data.as_slice())
                .map_err(|source| HarnessError::Io {
                    what: format!("adding {name} to the build context"),
                    source,
                })?;
        }
        for (name, target) in &self.links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            header.set_mtime(0);
            b.append_link(&mut header, name, target)
                .map_err(|source| HarnessError::Io {
                    what: format!("adding the link {name} to the build context"),
                    source,
                })?;
        }
        b.into_inner().map_err(|source| HarnessError::Io {
            what: "finishing the build context".into(),
            source,
        })
    }
}

/// The node image for this tree, built if an image with its content hash is missing.
pub async fn ensure_node(
    docker: &Docker,
    opts: &ImageOptions,
    base: &str,
) -> Result<String, HarnessError> {
    opts.check_prefix()?;
    let build = opts.bin_build();
    let (root, bin_dir) = tokio::try_join!(
        ensure_node_root(docker, opts, base),
        build_binaries(&opts.workspace, &build)
    )?;
    node_image(docker, opts, &root, &bin_dir).await
}

/// The node image of the binaries in `bin_dir` on `base`, built if missing.
async fn node_image(
    docker: &Docker,
    opts: &ImageOptions,
    root: &str,
    bin_dir: &Path,
) -> Result<String, HarnessError> {
    let base = root;
    let node_repo = opts.node_repo();
    let context = NodeContext::load(&opts.workspace, bin_dir)?;
    let base_id = ctx(
        format!("inspecting base image {base}"),
        docker.inspect_image(base).await,
    )?
    .id
    .unwrap_or_default();
    let tag = format!("{node_repo}:{}", context.hash(&base_id));
    if !opts.rebuild && image_exists(docker, &tag).await? {
        eprintln!("==> node image {tag} is up to date");
        return Ok(tag);
    }
    build_on_base(
        docker,
        &format!("node image {tag} from {base}"),
        &tag,
        base,
        &context,
        "node",
    )
    .await?;
    let step = Step::start(format!("checking that the binaries run in {tag}"));
    smoke_test(docker, &tag).await?;
    step.done();
    let _ = docker
        .tag_image(
            &tag,
            Some(bollard::query_parameters::TagImageOptions {
                repo: Some(node_repo.clone()),
                tag: Some("latest".into()),
            }),
        )
        .await;
    prune_node_images(docker, &node_repo, &tag, 3).await;
    Ok(tag)
}

/// Builds `context` (which holds a Dockerfile taking `ARG BASE`) on `base` as `tag`, labelled
/// `clusterlab.image=<kind>`, showing the build's output as step details.
pub async fn build_on_base(
    docker: &Docker,
    what: &str,
    tag: &str,
    base: &str,
    context: &NodeContext,
    kind: &str,
) -> Result<()> {
    let step = Step::start(format!("building {what}"));
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        buildargs: Some(HashMap::from([("BASE".to_string(), base.to_string())])),
        labels: Some(HashMap::from([(
            "clusterlab.image".to_string(),
            kind.to_string(),
        )])),
        ..Default::default()
    };
    let body = bollard::body_full(context.tar()?.into());
    let mut stream = docker.build_image(options, None, Some(body));
    while let Some(item) = stream.next().await {
        let info = ctx(format!("building {what}"), item)?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(HarnessError::ImageBuild {
                what: what.to_string(),
                output: detail,
            });
        }
        if let Some(s) = info.stream {
            let s = s.trim();
            if !s.is_empty() {
                step.detail(s);
            }
        }
    }
    step.done();
    Ok(())
}

/// Removes node images (of repository `repo`) of older trees, keeping `current` and the
/// `keep` newest others. Images still used by a container are left alone (Docker refuses to
/// remove them).
pub async fn prune_node_images(docker: &Docker, repo: &str, current: &str, keep: usize) {
    let Ok(mut list) = docker
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            filters: Some(HashMap::from([(
                "reference".to_string(),
                vec![format!("{repo}:*")],
            )])),
            ..Default::default()
        }))
        .await
    else {
        return;
    };
    list.sort_by_key(|i| std::cmp::Reverse(i.created));
    let old = list
        .into_iter()
        .filter(|i| {
            !i.repo_tags
                .iter()
                .any(|t| t == current || t.ends_with(":latest"))
        })
        .skip(keep);
    for image in old {
        for t in &image.repo_tags {
            if docker
                .remove_image(
                    t,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await
                .is_ok()
            {
                eprintln!("==> removed old node image {t}");
            }
        }
    }
}

static ONESHOT_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Runs `script` in a throw-away container of `image`; returns exit code and output. The
/// container is a run-scoped cluster of its own (`clusterlab.cluster=<its name>`, with this
/// process's id), so `harness down --name <its name>`, an interrupt and the sweep of a later
/// run all find it.
pub async fn run_oneshot(docker: &Docker, image: &str, script: &str) -> Result<(i64, String)> {
    oneshot(docker, image, script, None).await
}

/// [`run_oneshot`], and when the script succeeded and `export` names an image
/// (`repo:tag`, with `docker import` changes), the container's file system imported as it.
async fn oneshot(
    docker: &Docker,
    image: &str,
    script: &str,
    export: Option<(&str, Vec<String>)>,
) -> Result<(i64, String)> {
    let name = format!(
        "clusterlab-oneshot-{}-{}",
        std::process::id(),
        ONESHOT_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let objects = ClusterObjects::new(docker, &name).run_scoped();
    let spec = ContainerSpec {
        container: name.clone(),
        role: ContainerRole::OneShot,
        image: image.into(),
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        command: vec![script.into()],
        ..Default::default()
    };
    let result = async {
        objects.create_container(&spec).await?;
        objects.start(&name).await?;
        let mut code = 0;
        let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
        while let Some(r) = wait.next().await {
            match r {
                Ok(w) => code = w.status_code,
                Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
                Err(e) => return ctx(format!("waiting for {name}"), Err(e)),
            }
        }
        let mut out = String::new();
        let mut logs = docker.logs(
            &name,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        while let Some(Ok(chunk)) = logs.next().await {
            out.push_str(&chunk.to_string());
        }
        if let (0, Some((as_image, changes))) = (code, export) {
            import_container(docker, &name, as_image, changes).await?;
        }
        Ok((code, out))
    }
    .await;
    let _ = objects.remove().await;
    result
}

/// Imports the file system of the (stopped) container `name` as the image `as_image`
/// (`repo:tag`), one layer, applying `changes` (`docker import --change`).
async fn import_container(
    docker: &Docker,
    name: &str,
    as_image: &str,
    changes: Vec<String>,
) -> Result<()> {
    let export = docker
        .export_container(name)
        .map(|chunk| chunk.map_err(std::io::Error::other));
    import_stream(docker, None, export, as_image, changes).await
}

/// `docker import` of the tar stream `body` as the image `name` (`repo:tag`), applying
/// `changes`; the engine's progress goes to `step`'s details.
async fn import_stream(
    docker: &Docker,
    step: Option<&Step>,
    body: impl futures::Stream<Item = std::result::Result<bytes::Bytes, std::io::Error>>
        + Send
        + 'static,
    name: &str,
    changes: Vec<String>,
) -> Result<()> {
    let (repo, tag) = name.split_once(':').unwrap_or((name, "latest"));
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes,
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    while let Some(item) = stream.next().await {
        let info = ctx(format!("importing {name}"), item)?;
        if let (Some(step), Some(s)) = (step, info.status) {
            step.detail(&s);
        }
    }
    Ok(())
}

async fn smoke_test(docker: &Docker, image: &str) -> Result<()> {
    let script = format!(
        "set -e; for b in {}; do \
           if ldd /usr/local/bin/$b 2>&1 | grep -E 'not found|version .* not found'; then \
             echo \"$b cannot run in this image\"; exit 3; fi; done; \
         agent --version; etcd --version | head -n 1",
        NODE_BINARIES.join(" ")
    );
    let (code, out) = run_oneshot(docker, image, &script).await?;
    if code != 0 {
        return Err(HarnessError::SmokeTest {
            image: image.to_string(),
            code,
            output: out,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_suite_only_for_debian() {
        let deb = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(parse_os_release_suite(deb).as_deref(), Some("bookworm"));
        let ubuntu = "ID=ubuntu\nVERSION_CODENAME=noble\nID_LIKE=debian\n";
        assert_eq!(parse_os_release_suite(ubuntu), None);
    }

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            parse_debian_mirror(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one = "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            parse_debian_mirror(one).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(parse_debian_mirror("deb https://x/ubuntu noble main"), None);
    }

    #[test]
    fn image_prefixes_make_valid_repository_names() {
        for good in ["clusterlab", "fr", "a.b_c-1", "9lab"] {
            assert_eq!(check_image_prefix(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Lab",
            "-lab",
            "lab/x",
            "lab:1",
            "la b",
            &"x".repeat(101),
        ] {
            assert!(check_image_prefix(bad).is_err(), "{bad:?} accepted");
        }
        let mut opts = ImageOptions::for_workspace(PathBuf::from("/w"));
        opts.prefix = "fr".into();
        assert_eq!(opts.base_repo(), "fr-base");
        assert_eq!(opts.node_repo(), "fr-node");
        opts.prefix = "Fr".into();
        let err = opts.check_prefix().unwrap_err().to_string();
        assert!(
            err.contains("\"Fr\"") && err.contains(IMAGE_PREFIX_ENV),
            "{err}"
        );
    }

    #[test]
    fn binaries_are_built_where_and_how_the_running_executable_was() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        for d in ["debug/deps", "release", "node"] {
            std::fs::create_dir_all(target.join(d)).unwrap();
        }
        // No CACHEDIR.TAG: not a cargo target dir.
        assert_eq!(cargo_output_of(&target.join("debug/harness")), None);
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        let of = |p: &str| cargo_output_of(&target.join(p));
        assert_eq!(of("debug/harness"), Some((target.clone(), "dev".into())));
        assert_eq!(
            of("debug/deps/cluster-0123abcd"),
            Some((target.clone(), "dev".into()))
        );
        assert_eq!(
            of("release/harness"),
            Some((target.clone(), "release".into()))
        );
        assert_eq!(of("node/harness"), Some((target.clone(), "node".into())));
        let b = BinBuild {
            target_dir: target.clone(),
            profile: "dev".into(),
        };
        assert_eq!(b.out_dir(), target.join("debug"));
        let b = BinBuild {
            target_dir: target.clone(),
            profile: "node".into(),
        };
        assert_eq!(b.out_dir(), target.join("node"));
    }

    #[test]
    fn nodes_share_the_harness_profile_unless_told_or_benchmarked() {
        // A debug harness (`cargo run`, the trials) builds debug nodes on its dependencies.
        assert_eq!(node_profile("dev", None), "dev");
        assert_eq!(node_profile("dev", Some("")), "dev");
        assert_eq!(node_profile("release", None), "release");
        // CLUSTERLAB_NODE_PROFILE=node: optimised nodes from a debug harness.
        assert_eq!(node_profile("dev", Some("node")), "node");
        assert_eq!(node_profile("release", Some(" dev ")), "dev");
        let t = PathBuf::from("/t");
        let dev = BinBuild {
            target_dir: t.clone(),
            profile: "dev".into(),
        };
        assert!(dev.is_debug());
        let opt = dev.clone().optimised();
        assert_eq!(opt.profile, BIN_PROFILE);
        assert_eq!(opt.target_dir, t);
        assert!(!opt.is_debug());
        assert_eq!(opt.out_dir(), t.join("node"));
        // A benchmark's options get optimised nodes whatever the harness and the variable say.
        let mut opts = ImageOptions::for_workspace(PathBuf::from("/w"));
        assert!(!opts.optimised_nodes);
        opts.optimised_nodes = true;
        assert_eq!(opts.bin_build().profile, BIN_PROFILE);
    }

    #[test]
    fn node_root_hash_changes_with_base_script_and_settings() {
        let env = vec!["ENV PATH=/bin".to_string()];
        let a = node_root_hash("sha256:1", "rm -rf /x", &env);
        assert_eq!(a, node_root_hash("sha256:1", "rm -rf /x", &env));
        assert_ne!(a, node_root_hash("sha256:2", "rm -rf /x", &env));
        assert_ne!(a, node_root_hash("sha256:1", "rm -rf /y", &env));
        assert_ne!(a, node_root_hash("sha256:1", "rm -rf /x", &[]));
        // Parts are length-prefixed: moving text from one to the next changes the hash.
        assert_ne!(a, node_root_hash("sha256:1rm", " -rf /x", &env));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn context_hash_changes_with_content_and_base() {
        let ctx = |bin: &[u8]| NodeContext {
            files: vec![
                ("Dockerfile".into(), b"FROM x".to_vec(), 0o644),
                ("bin/agent".into(), bin.to_vec(), 0o755),
            ],
            links: vec![("bin/proxy".into(), "agent".into())],
        };
        let a = ctx(b"one").hash("sha256:1");
        assert_eq!(a, ctx(b"one").hash("sha256:1"));
        assert_ne!(a, ctx(b"two").hash("sha256:1"));
        assert_ne!(a, ctx(b"one").hash("sha256:2"));
        let mut relinked = ctx(b"one");
        relinked.links[0].1 = "other".into();
        assert_ne!(a, relinked.hash("sha256:1"));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn context_tar_holds_every_file_with_its_mode() {
        let c = NodeContext {
            files: vec![
                ("Dockerfile".into(), b"FROM x".to_vec(), 0o644),
                ("bin/agent".into(), b"\x7fELF".to_vec(), 0o755),
            ],
            links: vec![("bin/proxy".into(), "agent".into())],
        };
        let data = c.tar().unwrap();
        let mut ar = tar::Archive::new(data.as_slice());
        let entries: Vec<(String, u32, Option<String>)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("Dockerfile".into(), 0o644, None),
                ("bin/agent".into(), 0o755, None),
                ("bin/proxy".into(), 0o777, Some("agent".into())),
            ]
        );
    }

    #[test]
    fn build_folders_are_private_fresh_and_removed_without_following_links() {
        use std::os::unix::fs::MetadataExt;
        let parent = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let a = BuildDir::create(parent.path()).unwrap();
        let b = BuildDir::create(parent.path()).unwrap();
        assert_ne!(a.dir, b.dir);
        let name = a.dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("clusterlab-rootfs-"), "{name}");
        assert_ne!(
            name,
            format!("clusterlab-rootfs-{}", std::process::id()),
            "a predictable name"
        );
        assert_eq!(std::fs::metadata(&a.dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&a.root).unwrap().mode() & 0o777, 0o755);
        // Links out of the root, to a file and to a folder, as a package might leave them.
        std::fs::create_dir_all(a.root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&victim, a.root.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink(outside.path(), a.root.join("etc/outside")).unwrap();
        // Writing into the root replaces the link instead of writing through it.
        write(
            &a.root.join("etc/resolv.conf"),
            "nameserver 10.0.0.1\n",
            0o644,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(a.root.join("etc/resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
        let dir = a.dir.clone();
        drop(a);
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(outside.path().is_dir());
        drop(b);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn mounts_below_a_folder_are_found_deepest_first() {
        let info = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 22 0:5 / /var/tmp/clusterlab-rootfs-x/root/proc rw - proc proc rw\n\
                    31 30 0:6 / /var/tmp/clusterlab-rootfs-x/root/proc/sys/fs/binfmt_misc rw - binfmt_misc b rw\n\
                    32 22 0:7 / /var/tmp/clusterlab-rootfs-xy rw - tmpfs t rw\n\
                    33 22 0:8 / /var/tmp/clusterlab-rootfs-x/a\\040b rw - tmpfs t rw\n";
        let dir = Path::new("/var/tmp/clusterlab-rootfs-x");
        assert_eq!(
            mounts_below(info, dir),
            [
                PathBuf::from("/var/tmp/clusterlab-rootfs-x/root/proc/sys/fs/binfmt_misc"),
                PathBuf::from("/var/tmp/clusterlab-rootfs-x/root/proc"),
                PathBuf::from("/var/tmp/clusterlab-rootfs-x/a b"),
            ]
        );
        assert!(mounts_below(info, Path::new("/srv")).is_empty());
    }
}

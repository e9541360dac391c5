//! `sapperctl genpsk` and `sapperctl init`: a node's files in one command.
//!
//! `init exit` writes a commented config, a fresh PSK file (0600) and the
//! certificate netd would otherwise generate at first start, then prints the
//! certificate's fingerprint and the exact command (and TOML lines) the
//! entry needs. `init entry` takes those values plus a copy of the PSK file.
//! Everything is written with `create_new` (never over an existing file
//! unless `--force`), and the config is parsed back with netd's own parser
//! before anything is written, so `init` cannot leave a file netd refuses.

use anyhow::{bail, Context, Result};
use ring::rand::SecureRandom;
use sapper_shared::config::{format_fingerprint, parse_fingerprint, Config};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Bytes of randomness in a generated PSK (written as hex, so the file's
/// bytes never end in whitespace that the reader would trim).
pub const PSK_BYTES: usize = 32;

/// A fresh PSK as the text of a PSK file: 64 hex digits and a newline.
pub fn fresh_psk() -> Result<Zeroizing<String>> {
    let mut raw = Zeroizing::new([0u8; PSK_BYTES]);
    ring::rand::SystemRandom::new()
        .fill(raw.as_mut())
        .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
    let mut text = Zeroizing::new(hex::encode(raw.as_ref()));
    text.push('\n');
    Ok(text)
}

/// Writes `data` to a new file with `mode` (set at creation, so the file is
/// never readable by others even for a moment). With `force` an existing
/// file is replaced (removed first, so the mode of the new one holds).
pub fn write_new(path: &Path, data: &[u8], mode: u32, force: bool) -> Result<()> {
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (it may exist already: --force replaces it)",
                path.display()
            )
        })?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    // create_new's mode is masked by the umask; make it exact.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(())
}

/// Which node `init` writes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitRole {
    /// Dials the exit and sends traffic into the tunnel.
    Entry,
    /// Listens and lets traffic out (kernel NAT through privd, or the
    /// userspace exit with `--userspace`).
    Exit,
}

/// `sapperctl init` arguments.
#[derive(clap::Args)]
pub struct InitArgs {
    /// entry or exit.
    pub role: InitRole,
    /// Directory for sapper.toml and the PSK file.
    #[arg(long, default_value = "/etc/sapper")]
    pub dir: PathBuf,
    /// netd.state_dir: where the certificate and key go.
    #[arg(long, default_value = "/var/lib/sapper")]
    pub state_dir: PathBuf,
    /// Directory of the management and privd sockets.
    #[arg(long, default_value = "/run/sapper")]
    pub run_dir: PathBuf,
    /// node.name (default: the role).
    #[arg(long)]
    pub name: Option<String>,
    /// quic or ws.
    #[arg(long, default_value = "quic")]
    pub transport: String,
    /// Exit: address to listen on (default 0.0.0.0:4433 for quic,
    /// 0.0.0.0:8443 for ws).
    #[arg(long)]
    pub listen: Option<String>,
    /// Exit: host:port the entry dials, used in the printed lines (default:
    /// the listen address, with EXIT_HOST for an unspecified address).
    #[arg(long)]
    pub public_address: Option<String>,
    /// Exit: a prefix it reaches and announces (repeatable).
    #[arg(long = "announce")]
    pub announce: Vec<String>,
    /// Exit: no privd and no TUN; traffic leaves through netd's own
    /// sockets (the userspace exit).
    #[arg(long)]
    pub userspace: bool,
    /// Entry: the exit's host:port.
    #[arg(long)]
    pub connect: Option<String>,
    /// Entry: the exit's certificate fingerprint (from `init exit`).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Entry: the exit's TLS server name (default: its node name, "exit").
    #[arg(long)]
    pub server_name: Option<String>,
    /// Entry: a copy of the exit's PSK file (copied into --dir as `psk`).
    #[arg(long)]
    pub psk_from: Option<PathBuf>,
    /// Entry: a prefix sent into the tunnel (repeatable).
    #[arg(long = "route")]
    pub route: Vec<String>,
    /// The TUN's address (default 10.99.0.1/24 entry, 10.99.0.2/24 exit).
    #[arg(long)]
    pub tun_address: Option<String>,
    /// The user netd drops to and privd serves.
    #[arg(long, default_value = "sapper-netd")]
    pub user: String,
    /// For the packaged units: the PSK through LoadCredential= (`%d/psk`).
    #[arg(long)]
    pub systemd: bool,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// What `init` wrote and what the other side needs.
pub struct InitReport {
    pub role: &'static str,
    pub config: PathBuf,
    pub psk_file: PathBuf,
    pub cert_file: PathBuf,
    pub fingerprint: String,
    /// Exit: the command to run on the entry (the PSK copy's path is this
    /// node's PSK path; replace it with where the copy is).
    pub entry_command: Option<Vec<String>>,
    /// Exit: the `[[netd.connect]]` block for an entry's existing config.
    pub entry_config: Option<String>,
}

impl InitReport {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "role": self.role,
            "config": self.config.display().to_string(),
            "psk_file": self.psk_file.display().to_string(),
            "cert_file": self.cert_file.display().to_string(),
            "fingerprint": self.fingerprint,
            "entry_command": self.entry_command,
            "entry_config": self.entry_config,
        })
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "wrote {} ({})", self.config.display(), self.role);
        let _ = writeln!(s, "wrote {} (PSK, mode 0600)", self.psk_file.display());
        let _ = writeln!(s, "wrote {} (certificate)", self.cert_file.display());
        let _ = writeln!(s, "fingerprint: {}", self.fingerprint);
        if let (Some(cmd), Some(block)) = (&self.entry_command, &self.entry_config) {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "On the entry: copy {} there privately (scp; keep it mode 0600), then run",
                self.psk_file.display()
            );
            let _ = writeln!(s, "  {}", shell_join(cmd));
            let _ = writeln!(
                s,
                "(--psk-from names where the copy is) or add to its sapper.toml:"
            );
            for line in block.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "Start: sapper-privd --config {0} (as root), then sapper-netd --config {0}; or under systemd see the README.", self.config.display());
        s.trim_end().to_string()
    }
}

/// Quotes for a POSIX shell only what needs it.
fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn q_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| q(i)).collect();
    format!("[{}]", quoted.join(", "))
}

fn p(path: &Path) -> String {
    q(&path.display().to_string())
}

/// The group of `user` (for privd's socket), by the user database.
fn primary_group(user: &str) -> Result<(nix::unistd::Uid, nix::unistd::Gid, String)> {
    let u = nix::unistd::User::from_name(user)
        .with_context(|| format!("looking up user {user:?}"))?
        .with_context(|| {
            format!("user {user:?} does not exist (create it, or pass --user USER)")
        })?;
    let g = nix::unistd::Group::from_gid(u.gid)
        .with_context(|| format!("looking up the group of {user:?}"))?
        .with_context(|| format!("the primary group of {user:?} does not exist"))?;
    Ok((u.uid, u.gid, g.name))
}

/// Runs `init`: builds the config, checks it with netd's parser, writes the
/// files.
pub fn run(a: &InitArgs) -> Result<InitReport> {
    // The daemons run from anywhere: every path in the config is absolute.
    let abs = |p: &Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let a = &InitArgs {
        dir: abs(&a.dir)?,
        state_dir: abs(&a.state_dir)?,
        run_dir: abs(&a.run_dir)?,
        psk_from: a.psk_from.as_deref().map(abs).transpose()?,
        name: a.name.clone(),
        transport: a.transport.clone(),
        listen: a.listen.clone(),
        public_address: a.public_address.clone(),
        announce: a.announce.clone(),
        connect: a.connect.clone(),
        fingerprint: a.fingerprint.clone(),
        server_name: a.server_name.clone(),
        route: a.route.clone(),
        tun_address: a.tun_address.clone(),
        user: a.user.clone(),
        ..*a
    };
    let role = match a.role {
        InitRole::Entry => "entry",
        InitRole::Exit => "exit",
    };
    let transport = match a.transport.as_str() {
        "quic" | "ws" => a.transport.as_str(),
        other => bail!("--transport: {other:?} is neither quic nor ws"),
    };
    let name = a.name.clone().unwrap_or_else(|| role.to_string());
    let (uid, gid, group) = primary_group(&a.user)?;
    let cfg_path = a.dir.join("sapper.toml");
    let psk_path = a.dir.join("psk");
    let cert_path = a.state_dir.join("cert.pem");
    let key_path = a.state_dir.join("key.pem");
    let psk_in_config = if a.systemd {
        "%d/psk".to_string()
    } else {
        psk_path.display().to_string()
    };
    let tun_address = a.tun_address.clone().unwrap_or_else(|| match a.role {
        InitRole::Entry => "10.99.0.1/24".into(),
        InitRole::Exit => "10.99.0.2/24".into(),
    });
    let default_port = if transport == "quic" { 4433 } else { 8443 };

    // The PSK: fresh on the exit, a copy of the exit's on the entry.
    let psk: Zeroizing<Vec<u8>> = match a.role {
        InitRole::Exit => {
            if a.psk_from.is_some() || a.connect.is_some() || a.fingerprint.is_some() {
                bail!("--psk-from, --connect and --fingerprint are for `init entry`");
            }
            Zeroizing::new(fresh_psk()?.as_bytes().to_vec())
        }
        InitRole::Entry => {
            let Some(from) = &a.psk_from else {
                bail!("init entry needs --psk-from FILE: a copy of the exit's PSK file");
            };
            let raw = Zeroizing::new(
                std::fs::read(from).with_context(|| format!("reading {}", from.display()))?,
            );
            // netd's own rules (length, trimming), checked now.
            sapper_shared::psk::Psk::new(raw.clone())
                .with_context(|| format!("{}: not a usable PSK", from.display()))?;
            raw
        }
    };

    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Sapper {role} node, written by `sapperctl init {role}`."
    );
    let _ = writeln!(
        c,
        "# Read by sapper-privd ([node], [privd]) and sapper-netd ([node], [netd]);"
    );
    let _ = writeln!(
        c,
        "# every key is described in the README and shared/src/config/."
    );
    let _ = writeln!(c);
    let _ = writeln!(c, "[node]");
    let _ = writeln!(c, "name = {}                # shown to peers", q(&name));
    let _ = writeln!(
        c,
        "role = {}                # the secure posture takes this role",
        q(role)
    );
    let _ = writeln!(
        c,
        "psk_file = {}   # the same PSK on both nodes; mode 0600{}",
        q(&psk_in_config),
        if a.systemd {
            " (LoadCredential=psk:… in the unit)"
        } else {
            ""
        }
    );
    let _ = writeln!(c);
    let _ = writeln!(c, "[netd]");
    let _ = writeln!(
        c,
        "user = {}            # netd drops to this user after binding",
        q(&a.user)
    );
    let _ = writeln!(c, "group = {}", q(&group));
    let _ = writeln!(
        c,
        "state_dir = {}   # certificate and key (cert.pem, key.pem)",
        p(&a.state_dir)
    );
    let _ = writeln!(
        c,
        "management_socket = {}   # sapperctl --socket",
        p(&a.run_dir.join("netd.sock"))
    );
    let with_privd = !(a.role == InitRole::Exit && a.userspace);
    if with_privd {
        let _ = writeln!(c, "privd_socket = {}", p(&a.run_dir.join("privd.sock")));
    }
    let mut public_address = None;
    let mut entry_command = None;
    let mut entry_config = None;
    match a.role {
        InitRole::Exit => {
            if !a.announce.is_empty() {
                let _ = writeln!(
                    c,
                    "announce_routes = {}   # prefixes this exit reaches",
                    q_list(&a.announce)
                );
            }
            let listen = a
                .listen
                .clone()
                .unwrap_or_else(|| format!("0.0.0.0:{default_port}"));
            let addr: std::net::SocketAddr = listen
                .parse()
                .with_context(|| format!("--listen: {listen:?} is not ADDRESS:PORT"))?;
            let _ = writeln!(c);
            let _ = writeln!(c, "[[netd.listen]]");
            let _ = writeln!(c, "transport = {}", q(transport));
            let _ = writeln!(c, "address = {}", q(&listen));
            let public = a.public_address.clone().unwrap_or_else(|| {
                if addr.ip().is_unspecified() {
                    format!("EXIT_HOST:{}", addr.port())
                } else {
                    listen.clone()
                }
            });
            // Filled in once the certificate exists.
            public_address = Some(public);
        }
        InitRole::Entry => {
            let (Some(connect), Some(fp)) = (&a.connect, &a.fingerprint) else {
                bail!("init entry needs --connect HOST:PORT and --fingerprint FP (both printed by `init exit`)");
            };
            let Some(fp_bytes) = parse_fingerprint(fp) else {
                bail!("--fingerprint: expected 64 hex digits (colons allowed)");
            };
            let _ = writeln!(c);
            let _ = writeln!(c, "[[netd.connect]]");
            let _ = writeln!(c, "transport = {}", q(transport));
            let _ = writeln!(c, "address = {}", q(connect));
            let _ = writeln!(
                c,
                "server_name = {}",
                q(a.server_name.as_deref().unwrap_or("exit"))
            );
            let _ = writeln!(
                c,
                "fingerprint = {}   # the exit's certificate (SHA-256)",
                q(&format_fingerprint(&fp_bytes))
            );
        }
    }
    if with_privd {
        let _ = writeln!(c);
        let _ = writeln!(c, "[privd]");
        let _ = writeln!(c, "socket = {}", p(&a.run_dir.join("privd.sock")));
        let _ = writeln!(
            c,
            "socket_group = {}     # netd's group may connect…",
            q(&group)
        );
        let _ = writeln!(
            c,
            "netd_user = {}        # …and only netd's uid is served",
            q(&a.user)
        );
        let _ = writeln!(c);
        let _ = writeln!(c, "[privd.tun]");
        let _ = writeln!(c, "name = \"sap0\"");
        let _ = writeln!(c, "addresses = {}", q_list(&[tun_address]));
        let _ = writeln!(c, "mtu = 1280");
        if a.role == InitRole::Entry && !a.route.is_empty() {
            let _ = writeln!(
                c,
                "routes = {}            # sent into the tunnel",
                q_list(&a.route)
            );
            let _ = writeln!(
                c,
                "allowed_routes = {}    # netd may add routes only inside these",
                q_list(&a.route)
            );
        }
        if a.role == InitRole::Exit {
            let _ = writeln!(c);
            let _ = writeln!(c, "[privd.nat]");
            let _ = writeln!(
                c,
                "enable = true            # IP forwarding + masquerade of tunnel traffic"
            );
        }
    }
    // netd's parser decides, before a byte is written.
    let mut checked = Config::parse(&c, &cfg_path.display().to_string())
        .context("the generated config does not parse (a bad argument?)")?;
    if a.systemd {
        // %d/ is expanded by netd at start; only its shape is checked here.
        checked
            .expand_credentials(&cfg_path.display().to_string(), Some(Path::new("/")))
            .context("the generated config")?;
    }

    // The certificate, as netd would generate it at first start.
    let ck = rcgen::generate_simple_self_signed(vec![name.clone()])
        .context("generating a self-signed certificate")?;
    let fingerprint = {
        let d = ring::digest::digest(&ring::digest::SHA256, ck.cert.der());
        let mut fp = [0u8; 32];
        fp.copy_from_slice(d.as_ref());
        format_fingerprint(&fp)
    };

    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    if !a.state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&a.state_dir)
            .with_context(|| format!("creating {}", a.state_dir.display()))?;
        std::fs::set_permissions(&a.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", a.state_dir.display()))?;
    }
    // `--psk-from` may name the very file init would write (the copy was
    // put in place already): then it is kept as it is.
    let psk_in_place = a
        .psk_from
        .as_ref()
        .and_then(|f| f.canonicalize().ok())
        .is_some_and(|f| psk_path.canonicalize().ok() == Some(f));
    if !a.force {
        for f in [&cfg_path, &psk_path, &cert_path, &key_path] {
            if psk_in_place && f == &psk_path {
                continue;
            }
            if f.exists() {
                bail!("{} exists already (--force replaces it)", f.display());
            }
        }
    }
    if psk_in_place {
        std::fs::set_permissions(&psk_path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", psk_path.display()))?;
    } else {
        write_new(&psk_path, &psk, 0o600, a.force)?;
    }
    write_new(
        &key_path,
        ck.signing_key.serialize_pem().as_bytes(),
        0o600,
        a.force,
    )?;
    write_new(&cert_path, ck.cert.pem().as_bytes(), 0o644, a.force)?;
    write_new(&cfg_path, c.as_bytes(), 0o644, a.force)?;
    // netd reads the certificate as its own user under systemd.
    if nix::unistd::geteuid().is_root() {
        for f in [&a.state_dir, &cert_path, &key_path] {
            nix::unistd::chown(f.as_path(), Some(uid), Some(gid))
                .with_context(|| format!("chown {} to {}", f.display(), a.user))?;
        }
    }

    if let Some(public) = public_address {
        let mut cmd = vec![
            "sapperctl".to_string(),
            "init".into(),
            "entry".into(),
            "--transport".into(),
            transport.into(),
            "--connect".into(),
            public.clone(),
            "--server-name".into(),
            name.clone(),
            "--fingerprint".into(),
            fingerprint.clone(),
            "--psk-from".into(),
            psk_path.display().to_string(),
        ];
        for r in &a.announce {
            cmd.push("--route".into());
            cmd.push(r.clone());
        }
        entry_command = Some(cmd);
        let mut block = String::new();
        let _ = writeln!(block, "[[netd.connect]]");
        let _ = writeln!(block, "transport = {}", q(transport));
        let _ = writeln!(block, "address = {}", q(&public));
        let _ = writeln!(block, "server_name = {}", q(&name));
        let _ = writeln!(block, "fingerprint = {}", q(&fingerprint));
        entry_config = Some(block);
    }
    Ok(InitReport {
        role,
        config: cfg_path,
        psk_file: psk_path,
        cert_file: cert_path,
        fingerprint,
        entry_command,
        entry_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_psks_are_long_distinct_and_usable() {
        let a = fresh_psk().unwrap();
        let b = fresh_psk().unwrap();
        assert_eq!(a.len(), 2 * PSK_BYTES + 1);
        assert_ne!(*a, *b);
        sapper_shared::psk::Psk::new(Zeroizing::new(a.as_bytes().to_vec())).unwrap();
    }

    #[test]
    fn shell_quoting() {
        let args = vec!["a".to_string(), "b c".into(), "it's".into()];
        assert_eq!(shell_join(&args), "a 'b c' 'it'\\''s'");
    }
}

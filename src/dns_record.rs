//! `lifeboat dns-record`: the zone-file lines an operator publishes — the DR
//! trigger TXT record (optionally signed) and the edges' A/AAAA records —
//! and `keygen` for the Ed25519 signing pair. It prints text and writes key
//! files; it never talks to a DNS server.
//!
//! Output is RFC 1035 master-file syntax with absolute owner names, one
//! record per line, so it can be pasted into any zone (BIND, NSD, Knot,
//! hickory) unchanged: `NAME. TTL IN TXT "..." ["..."]`. TXT text longer
//! than 255 bytes is split into several character-strings, which resolvers
//! join again before parsing (see `dr::record`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;

use crate::dr::record::{self, Kind, Spec};
use crate::dr::{key, DrMode};

/// The longest character-string of a TXT record.
pub const MAX_STRING: usize = 255;
/// The guide's recommended TTL for the trigger record.
pub const DEFAULT_TTL: u32 = 30;

/// `lifeboat dns-record` flags (kept here so `main` stays one match arm).
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    group(clap::ArgGroup::new("what").args(["name", "edge_name"]).multiple(true).required(true))
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Name of the DR trigger TXT record (e.g. `_dr.example.com`).
    #[arg(long, requires = "mode")]
    pub name: Option<String>,
    /// DR mode the record asks for: on, test or off.
    #[arg(long, requires = "name")]
    pub mode: Option<DrMode>,
    /// Products the record applies to: zpa or all.
    #[arg(long, default_value = "zpa")]
    pub kind: Kind,
    /// TTL of the printed records, in seconds.
    #[arg(long, default_value_t = DEFAULT_TTL)]
    pub ttl: u32,
    /// `t=`: unix seconds from which the record applies (default with --sign-key: now).
    #[arg(long)]
    pub start: Option<u64>,
    /// `x=`: unix seconds after which the mode is off.
    #[arg(long)]
    pub end: Option<u64>,
    /// Sign the record with this Ed25519 private key (from `dns-record keygen`).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Print only the trigger record's text (what a `file:` trigger holds
    /// and what the TXT record carries), not the zone-file line.
    #[arg(long, requires = "name", conflicts_with = "edge_name")]
    pub txt: bool,
    /// Name of the edges' A/AAAA record (e.g. `dr-edge.example.com`).
    #[arg(long, requires = "edges")]
    pub edge_name: Option<String>,
    /// Public address of a DR edge (repeat for each edge).
    #[arg(long = "edge", requires = "edge_name")]
    pub edges: Vec<IpAddr>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write an Ed25519 signing pair: OUT.key (secret, 0600) and OUT.pub
    /// (for `[dr] signing_key`).
    Keygen {
        /// Path prefix of the pair: writes OUT.key and OUT.pub.
        #[arg(long, value_name = "OUT")]
        out: PathBuf,
    },
}

/// Run the subcommand; returns what to print on stdout.
pub fn run(args: &Args, now_unix: u64) -> anyhow::Result<String> {
    if let Some(Command::Keygen { out }) = &args.command {
        let (private, public) = keygen(out)?;
        return Ok(format!(
            "wrote {} (secret, keep offline) and {}\nset `[dr] signing_key = {:?}` on edges and clients (connectors do not read the trigger)\n",
            private.display(),
            public.display(),
            public.display().to_string(),
        ));
    }
    let mut out = String::new();
    if let (Some(name), Some(mode)) = (&args.name, args.mode) {
        let signing = match &args.sign_key {
            None => None,
            Some(p) => Some(load_private_key(p)?),
        };
        let spec = Spec {
            mode,
            kind: args.kind,
            start: args.start.or_else(|| signing.as_ref().map(|_| now_unix)),
            end: args.end,
        };
        if let (Some(t), Some(x)) = (spec.start, spec.end) {
            anyhow::ensure!(x > t, "--end ({x}) must be after the start ({t})");
        }
        let text = record::encode(&spec, signing.as_ref());
        if args.txt {
            owner(name)?;
            return Ok(format!("{text}\n"));
        }
        out.push_str(&txt_line(name, args.ttl, &text)?);
    }
    if let Some(name) = &args.edge_name {
        out.push_str(&address_lines(name, args.ttl, &args.edges)?);
    }
    Ok(out)
}

/// `name` as an absolute zone-file owner name (validated, trailing dot).
pub fn owner(name: &str) -> anyhow::Result<String> {
    let n = hickory_resolver::Name::from_str(name)
        .map_err(|e| anyhow::anyhow!("`{name}` is not a DNS name: {e}"))?;
    anyhow::ensure!(!n.is_root(), "the record name may not be the root");
    let mut s = n.to_ascii();
    if !s.ends_with('.') {
        s.push('.');
    }
    Ok(s)
}

/// One TXT record line holding `text` as <=255-byte character-strings.
pub fn txt_line(name: &str, ttl: u32, text: &str) -> anyhow::Result<String> {
    let strings: Vec<String> = text.as_bytes().chunks(MAX_STRING).map(quote).collect();
    let strings = if strings.is_empty() {
        "\"\"".to_string()
    } else {
        strings.join(" ")
    };
    Ok(format!("{} {ttl} IN TXT {strings}\n", owner(name)?))
}

/// One A or AAAA line per edge address.
pub fn address_lines(name: &str, ttl: u32, edges: &[IpAddr]) -> anyhow::Result<String> {
    let owner = owner(name)?;
    let mut out = String::new();
    for ip in edges {
        let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
        let _ = writeln!(out, "{owner} {ttl} IN {kind} {ip}");
    }
    Ok(out)
}

/// A zone-file quoted character-string: `"` and `\` escaped, bytes outside
/// printable ASCII as `\DDD`.
fn quote(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\{b:03}");
            }
        }
    }
    s.push('"');
    s
}

fn load_private_key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    key::parse_private_key(&text).with_context(|| format!("{}", path.display()))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Write `OUT.key` (PKCS#8 PEM, 0600) and `OUT.pub` (SPKI PEM); refuses to
/// overwrite either.
pub fn keygen(out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let private = with_suffix(out, ".key");
    let public = with_suffix(out, ".pub");
    for p in [&private, &public] {
        anyhow::ensure!(!p.exists(), "{} exists; not overwriting a key", p.display());
    }
    let k = key::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    f.write_all(key::encode_private_key(&k).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", private.display()))?;
    std::fs::write(&public, key::encode_public_key(&k.verifying_key()))
        .with_context(|| format!("writing {}", public.display()))?;
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            txt_line("_dr.example.com", 30, "v=1; b=on; k=zpa").unwrap(),
            "_dr.example.com. 30 IN TXT \"v=1; b=on; k=zpa\"\n"
        );
        assert_eq!(
            address_lines(
                "dr-edge.example.com.",
                60,
                &["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()]
            )
            .unwrap(),
            "dr-edge.example.com. 60 IN A 192.0.2.1\ndr-edge.example.com. 60 IN AAAA 2001:db8::1\n"
        );
        assert!(owner("bad..name").is_err());
        assert!(owner(".").is_err());
    }

    #[test]
    fn long_text_is_split_at_255_bytes() {
        let text = "x".repeat(600);
        let line = txt_line("a.test", 1, &text).unwrap();
        let strings: Vec<&str> = line
            .trim_end()
            .split(" IN TXT ")
            .nth(1)
            .unwrap()
            .split(' ')
            .collect();
        let lens: Vec<usize> = strings.iter().map(|s| s.len() - 2).collect();
        assert_eq!(lens, [255, 255, 90]);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(b"a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote(&[0x07, b'z', 0xff]), r#""\007z\255""#);
    }

    #[test]
    fn keygen_writes_a_usable_pair() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("dr");
        let (private, public) = keygen(&out).unwrap();
        assert_eq!(private, dir.path().join("dr.key"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let k = load_private_key(&private).unwrap();
        let vk = key::parse_public_key(&std::fs::read_to_string(&public).unwrap()).unwrap();
        assert_eq!(k.verifying_key(), vk);
        assert!(keygen(&out).is_err(), "no overwrite");
    }
}

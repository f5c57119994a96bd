//! `mosquitto.conf` as mosquitto.conf(5) reads it: `include_dir` followed (its `*.conf`
//! files in name order, nesting bounded), listeners (`listener PORT [ADDR]`, the old
//! `port`/`bind_address` default listener) with their TLS and `protocol` settings,
//! the security settings (`password_file`, `acl_file`, `allow_anonymous`) either
//! global or, with `per_listener_settings true`, per listener, the Home Assistant
//! add-on's go-auth file paths, and the limits moat has equivalents for. Every other
//! directive is kept as `other` with its origin so the conversion can say why it is
//! not carried over. It decides nothing about moat: `convert` does that.

use std::path::{Path, PathBuf};

use super::ImportError;
use super::source::{self, Line, Origin, Paths, split_key};

/// How deep `include_dir` may nest (mosquitto has no limit; a loop would never end).
const MAX_INCLUDE_DEPTH: usize = 8;
/// How many files one import reads through `include_dir`.
const MAX_INCLUDED_FILES: usize = 256;

/// A value with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub origin: Origin,
}

/// Authentication and authorisation settings: global, or one listener's.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub password_files: Vec<At<PathBuf>>,
    pub acl_files: Vec<At<PathBuf>>,
    pub allow_anonymous: Option<At<bool>>,
}

/// One listener as configured.
#[derive(Debug, Clone)]
pub struct Listener {
    /// The `listener` (or `port`) line.
    pub origin: Origin,
    pub port: u16,
    /// Bind address or host name as written; `None` means every interface.
    pub address: Option<String>,
    pub websockets: Option<Origin>,
    pub cafile: Option<At<String>>,
    pub certfile: Option<At<String>>,
    pub keyfile: Option<At<String>>,
    pub require_certificate: Option<At<bool>>,
    pub use_identity_as_username: Option<At<bool>>,
    pub use_subject_as_username: Option<At<bool>>,
    pub max_connections: Option<At<i64>>,
    /// Settings that apply to this listener only (with `per_listener_settings true`).
    pub security: Security,
    /// Listener-level directives moat has no equivalent for.
    pub other: Vec<Line>,
}

impl Listener {
    fn new(origin: Origin, port: u16, address: Option<String>) -> Listener {
        Listener {
            origin,
            port,
            address,
            websockets: None,
            cafile: None,
            certfile: None,
            keyfile: None,
            require_certificate: None,
            use_identity_as_username: None,
            use_subject_as_username: None,
            max_connections: None,
            security: Security::default(),
            other: Vec::new(),
        }
    }

    /// TLS is on when the listener has a certificate (mosquitto.conf(5): "certfile").
    pub fn is_tls(&self) -> bool {
        self.certfile.is_some()
    }

    /// Client certificates name the user (CN or the whole subject).
    pub fn cert_identity(&self) -> bool {
        let on = |v: &Option<At<bool>>| v.as_ref().is_some_and(|b| b.value);
        on(&self.use_identity_as_username) || on(&self.use_subject_as_username)
    }
}

/// A whole configuration, includes resolved.
#[derive(Debug, Clone, Default)]
pub struct Conf {
    pub listeners: Vec<Listener>,
    /// The `port`/`bind_address` listener, if either was given.
    pub default_listener: Option<Listener>,
    pub per_listener_settings: Option<At<bool>>,
    /// Global security settings (all of them, without `per_listener_settings`).
    pub security: Security,
    /// Global limits with a moat equivalent, in the order seen.
    pub limits: Vec<At<(String, i64)>>,
    /// Every other directive (bridges, logging, persistence, plugins, unknown ...).
    pub other: Vec<Line>,
    /// Every file read, in order.
    pub files: Vec<PathBuf>,
}

impl Conf {
    /// Every listener mosquitto would open: the explicit ones, then the default one.
    pub fn all_listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter().chain(self.default_listener.iter())
    }
}

/// Global directives that mosquitto.conf(5) lists as limits moat also has.
pub const LIMIT_KEYS: &[&str] = &[
    "max_inflight_messages",
    "max_queued_messages",
    "max_queued_bytes",
    "max_packet_size",
    "max_keepalive",
];

/// Reads `path` and everything it includes.
pub fn read(path: &Path, paths: &Paths) -> Result<Conf, ImportError> {
    let mut lines = Vec::new();
    let mut files = Vec::new();
    collect(path, None, paths, 0, &mut lines, &mut files)?;
    // `per_listener_settings` changes how every security line is read, wherever it is.
    let per_listener = lines
        .iter()
        .rev()
        .find(|l| split_key(&l.text).0 == "per_listener_settings")
        .map(|l| {
            parse_bool(l).map(|value| At {
                value,
                origin: l.origin.clone(),
            })
        })
        .transpose()?;
    let mut conf = Conf {
        per_listener_settings: per_listener.clone(),
        files,
        ..Conf::default()
    };
    let per_listener = per_listener.is_some_and(|p| p.value);
    for line in lines {
        apply(&mut conf, line, per_listener, paths)?;
    }
    Ok(conf)
}

fn collect(
    path: &Path,
    at: Option<&Origin>,
    paths: &Paths,
    depth: usize,
    out: &mut Vec<Line>,
    files: &mut Vec<PathBuf>,
) -> Result<(), ImportError> {
    if files.len() >= MAX_INCLUDED_FILES {
        return Err(invalid(
            at,
            format!("more than {MAX_INCLUDED_FILES} configuration files through include_dir"),
        ));
    }
    files.push(path.to_path_buf());
    for line in source::read_lines(path, "configuration file", at)? {
        let (key, rest) = split_key(&line.text);
        if key != "include_dir" {
            out.push(line);
            continue;
        }
        if rest.is_empty() {
            return Err(invalid(Some(&line.origin), "include_dir needs a directory"));
        }
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(invalid(
                Some(&line.origin),
                format!("include_dir nests deeper than {MAX_INCLUDE_DEPTH} levels (a loop?)"),
            ));
        }
        let dir = paths.resolve(rest, &line.origin);
        let entries = std::fs::read_dir(&dir).map_err(|e| ImportError::Read {
            at: Some(line.origin.clone()),
            what: "include_dir directory",
            path: dir.clone(),
            message: e.to_string(),
        })?;
        // mosquitto reads the directory's `*.conf` files in name order (2.0).
        let mut included: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
            .collect();
        included.sort();
        for file in included {
            collect(&file, Some(&line.origin), paths, depth + 1, out, files)?;
        }
    }
    Ok(())
}

fn apply(
    conf: &mut Conf,
    line: Line,
    per_listener: bool,
    paths: &Paths,
) -> Result<(), ImportError> {
    let (key, rest) = split_key(&line.text);
    let origin = line.origin.clone();
    match key {
        "listener" => {
            let mut words = rest.split_ascii_whitespace();
            let port = parse_port(&line, words.next())?;
            let address = words.next().map(str::to_string);
            conf.listeners
                .push(Listener::new(origin.clone(), port, address));
        }
        "port" => {
            let port = parse_port(&line, Some(rest))?;
            default_listener(conf, &origin).port = port;
        }
        "bind_address" => {
            if rest.is_empty() {
                return Err(invalid(Some(&origin), "bind_address needs an address"));
            }
            default_listener(conf, &origin).address = Some(rest.to_string());
        }
        "per_listener_settings" | "include_dir" => {}
        "password_file"
        | "acl_file"
        | "auth_opt_files_password_path"
        | "auth_opt_files_acl_path" => {
            if rest.is_empty() {
                return Err(invalid(Some(&origin), format!("{key} needs a path")));
            }
            let file = at(paths.resolve(rest, &origin), &origin);
            let security = security(conf, per_listener);
            if key.contains("password") {
                security.password_files.push(file);
            } else {
                security.acl_files.push(file);
            }
        }
        "allow_anonymous" => {
            let value = parse_bool(&line)?;
            security(conf, per_listener).allow_anonymous = Some(at(value, &origin));
        }
        "protocol"
        | "cafile"
        | "certfile"
        | "keyfile"
        | "require_certificate"
        | "use_identity_as_username"
        | "use_subject_as_username"
        | "max_connections" => {
            let Some(listener) = current_listener(conf) else {
                conf.other.push(line);
                return Ok(());
            };
            match key {
                "protocol" => match rest {
                    "websockets" => listener.websockets = Some(origin.clone()),
                    "mqtt" => {}
                    other => {
                        return Err(invalid(
                            Some(&origin),
                            format!("protocol {other:?}: mosquitto knows mqtt and websockets"),
                        ));
                    }
                },
                "cafile" => listener.cafile = Some(at(rest.to_string(), &origin)),
                "certfile" => listener.certfile = Some(at(rest.to_string(), &origin)),
                "keyfile" => listener.keyfile = Some(at(rest.to_string(), &origin)),
                "max_connections" => {
                    listener.max_connections = Some(at(parse_int(&line)?, &origin))
                }
                _ => {
                    let value = parse_bool(&line)?;
                    let slot = match key {
                        "require_certificate" => &mut listener.require_certificate,
                        "use_identity_as_username" => &mut listener.use_identity_as_username,
                        _ => &mut listener.use_subject_as_username,
                    };
                    *slot = Some(at(value, &origin));
                }
            }
        }
        k if LIMIT_KEYS.contains(&k) => {
            let value = parse_int(&line)?;
            conf.limits.push(at((k.to_string(), value), &origin));
        }
        _ => match current_listener(conf) {
            Some(listener) if LISTENER_KEYS.contains(&key) => listener.other.push(line),
            _ => conf.other.push(line),
        },
    }
    Ok(())
}

/// Listener-level options of mosquitto.conf(5) that moat has no equivalent for.
const LISTENER_KEYS: &[&str] = &[
    "bind_interface",
    "capath",
    "ciphers",
    "ciphers_tls1.3",
    "crlfile",
    "dhparamfile",
    "http_dir",
    "mount_point",
    "psk_hint",
    "socket_domain",
    "tls_engine",
    "tls_engine_kpass_sha1",
    "tls_keyform",
    "tls_version",
    "use_username_as_clientid",
    "websockets_headers_size",
];

/// The listener that listener-level lines apply to: the last `listener`, else the
/// default one.
fn current_listener(conf: &mut Conf) -> Option<&mut Listener> {
    if conf.listeners.is_empty() {
        conf.default_listener.as_mut()
    } else {
        conf.listeners.last_mut()
    }
}

fn default_listener<'c>(conf: &'c mut Conf, origin: &Origin) -> &'c mut Listener {
    conf.default_listener
        .get_or_insert_with(|| Listener::new(origin.clone(), 1883, None))
}

fn security(conf: &mut Conf, per_listener: bool) -> &mut Security {
    if per_listener {
        // With per_listener_settings, security lines belong to the listener above them.
        if let Some(listener) = conf.listeners.last_mut() {
            return &mut listener.security;
        }
        if let Some(listener) = conf.default_listener.as_mut() {
            return &mut listener.security;
        }
    }
    &mut conf.security
}

fn parse_port(line: &Line, word: Option<&str>) -> Result<u16, ImportError> {
    word.and_then(|w| w.parse::<u16>().ok()).ok_or_else(|| {
        invalid(
            Some(&line.origin),
            format!("{:?}: expected a port number from 0 to 65535", line.text),
        )
    })
}

fn parse_bool(line: &Line) -> Result<bool, ImportError> {
    match split_key(&line.text).1 {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(invalid(
            Some(&line.origin),
            format!("{other:?} is not true or false (mosquitto accepts only those)"),
        )),
    }
}

fn parse_int(line: &Line) -> Result<i64, ImportError> {
    let (key, rest) = split_key(&line.text);
    rest.parse::<i64>().map_err(|_| {
        invalid(
            Some(&line.origin),
            format!("{key} {rest:?}: expected a whole number"),
        )
    })
}

fn at<T>(value: T, origin: &Origin) -> At<T> {
    At {
        value,
        origin: origin.clone(),
    }
}

fn invalid(at: Option<&Origin>, message: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        at: at.cloned(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf_from(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Conf, ImportError>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let conf = read(&dir.path().join(files[0].0), &Paths::default());
        (dir, conf)
    }

    #[test]
    fn listeners_and_their_settings() {
        let (_dir, conf) = conf_from(&[(
            "m.conf",
            "listener 1883 127.0.0.1\r\nmax_connections 50\nlistener 8883\ncertfile /c.pem\nkeyfile /k.pem\nrequire_certificate true\nuse_identity_as_username true\nlistener 9001\nprotocol websockets\nmax_queued_messages 8192\n",
        )]);
        let conf = conf.unwrap();
        assert_eq!(conf.listeners.len(), 3);
        let [plain, tls, ws] = &conf.listeners[..] else {
            panic!()
        };
        assert_eq!(
            (plain.port, plain.address.as_deref()),
            (1883, Some("127.0.0.1"))
        );
        assert_eq!(plain.max_connections.as_ref().map(|m| m.value), Some(50));
        assert!(!plain.is_tls() && tls.is_tls() && tls.cert_identity());
        assert!(ws.websockets.is_some());
        assert_eq!(
            conf.limits[0].value,
            ("max_queued_messages".to_string(), 8192)
        );
        assert_eq!(conf.limits[0].origin.line, 10);
    }

    #[test]
    fn security_is_global_or_per_listener() {
        let (_d, conf) =
            conf_from(&[("m.conf", "password_file pw\nlistener 1883\nacl_file acl\n")]);
        let conf = conf.unwrap();
        assert_eq!(conf.security.password_files.len(), 1);
        assert_eq!(conf.security.acl_files.len(), 1);
        let (_d, conf) = conf_from(&[(
            "m.conf",
            "listener 1883\npassword_file pw\nlistener 1884\nacl_file acl\nper_listener_settings true\n",
        )]);
        let conf = conf.unwrap();
        assert!(conf.security.password_files.is_empty());
        assert_eq!(conf.listeners[0].security.password_files.len(), 1);
        assert_eq!(conf.listeners[1].security.acl_files.len(), 1);
    }

    #[test]
    fn include_dir_reads_conf_files_in_order_and_unknowns_are_kept() {
        let (_d, conf) = conf_from(&[
            ("m.conf", "include_dir extra\nport 1884\n"),
            ("extra/b.conf", "log_dest stdout\n"),
            ("extra/a.conf", "frobnicate yes\n"),
            ("extra/c.txt", "ignored\n"),
        ]);
        let conf = conf.unwrap();
        let others: Vec<&str> = conf.other.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(others, vec!["frobnicate yes", "log_dest stdout"]);
        assert_eq!(conf.files.len(), 3);
        assert_eq!(conf.default_listener.unwrap().port, 1884);
    }

    #[test]
    fn include_loops_and_missing_files_are_errors_with_the_line() {
        let (_d, conf) = conf_from(&[("m.conf", "# x\ninclude_dir .\n")]);
        let err = conf.unwrap_err().to_string();
        assert!(err.contains("m.conf:2"), "{err}");
        assert!(err.contains("nests deeper"), "{err}");
        let (_d, conf) = conf_from(&[("m.conf", "\n\ninclude_dir /nonexistent-moat-dir\n")]);
        let err = conf.unwrap_err().to_string();
        assert!(
            err.contains("m.conf:3") && err.contains("/nonexistent-moat-dir"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_errors_with_the_line() {
        for (text, needle) in [
            ("listener http\n", "port number"),
            ("listener 70000\n", "port number"),
            ("allow_anonymous yes\n", "not true or false"),
            ("max_queued_messages lots\n", "whole number"),
            ("listener 1\nprotocol http\n", "protocol"),
            ("password_file\n", "needs a path"),
        ] {
            let (_d, conf) = conf_from(&[("m.conf", text)]);
            let err = conf.unwrap_err().to_string();
            assert!(
                err.contains("m.conf:") && err.contains(needle),
                "{text}: {err}"
            );
        }
    }
}

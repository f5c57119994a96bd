//! Malformed manifests, each run through the real binary (`moat check --manifest`):
//! every one must exit 1, name the offending line and column, and never panic.
//! The offending line of each fixture is marked with a `# <-` comment.

use std::process::Command;

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
const MARK: &str = "# <-";

/// Runs `moat check` on `yaml` (with `HASH` filled in) and returns stderr.
fn check(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("check")
        .arg("--manifest")
        .arg(&path)
        .env_remove("MOAT_MANIFEST")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts rejection at `line`, and that the message mentions `needle`.
fn rejected_at(yaml: &str, line: usize, needle: &str) {
    let (code, stderr) = check(yaml);
    assert_eq!(code, Some(1), "expected exit 1, stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    assert!(
        stderr.contains(&format!("line {line} column ")),
        "expected `line {line} column` in:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("moat.yaml:{line}:")),
        "expected a snippet header for line {line} in:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "expected {needle:?} in:\n{stderr}"
    );
}

/// Fills in `HASH` and asserts rejection at the line marked `# <-`.
fn rejected(yaml: &str, needle: &str) {
    let yaml = yaml.replace("HASH", HASH);
    let line = yaml
        .lines()
        .position(|l| l.contains(MARK))
        .map_or(1, |i| i + 1);
    rejected_at(&yaml, line, needle);
}

#[test]
fn unknown_top_level_field() {
    rejected("version: 1\ncolour: blue # <-\n", "unknown field `colour`");
}

#[test]
fn unknown_nested_field() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    password_hash: \"HASH\"\n    pubish: [\"a/#\"] # <-\n",
        "unknown field `pubish`",
    );
}

#[test]
fn unknown_limit() {
    rejected(
        "version: 1\nbroker:\n  limits:\n    max_conections: 3 # <-\n",
        "unknown field `max_conections`",
    );
}

#[test]
fn duplicate_key() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    role: homeassistant # <-\n    password_hash: \"HASH\"\n",
        "duplicate",
    );
}

#[test]
fn duplicate_identity() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    password_hash: \"HASH\"\n  bob: # <-\n    role: observer\n",
        "duplicate",
    );
}

#[test]
fn yes_is_not_a_boolean() {
    rejected(
        "version: 1\nbroker:\n  listen:\n    plain: { port: 1883 }\ndevices:\n  plug:\n    role: tasmota\n    password_hash: \"HASH\"\n    plaintext: yes # <-\n",
        "boolean",
    );
}

#[test]
fn on_is_not_a_boolean() {
    rejected("version: 1\nfirewall:\n  ssh: on # <-\n", "boolean");
}

#[test]
fn wrong_type_for_a_mapping() {
    rejected("version: 1\nusers: [bob] # <-\n", "mapping");
}

#[test]
fn wrong_type_for_a_port() {
    rejected(
        "version: 1\nbroker:\n  listen:\n    tls: { port: eighty } # <-\n",
        "u16",
    );
}

#[test]
fn oversized_input_is_refused_by_the_budget() {
    let mut yaml = String::from("version: 1\n");
    let filler = format!("# {}\n", "x".repeat(100));
    while yaml.len() <= 1024 * 1024 {
        yaml.push_str(&filler);
    }
    let line = yaml[..1024 * 1024].matches('\n').count() + 1;
    rejected_at(&yaml, line, "budget");
}

#[test]
fn tab_in_indentation() {
    rejected(
        "version: 1\nusers:\n\tbob: # <-\n    role: observer\n",
        "tab",
    );
}

#[test]
fn missing_version() {
    rejected("users: {} # <-\n", "missing field `version`");
}

#[test]
fn wrong_version() {
    rejected("version: 2 # <-\n", "version");
}

#[test]
fn empty_file() {
    rejected("", "empty");
}

#[test]
fn two_documents() {
    rejected("version: 1\n--- # <-\nversion: 1\n", "documents");
}

fn with_user(name_line: &str) -> String {
    format!(
        "version: 1\nusers:\n  {name_line} # <-\n    role: observer\n    password_hash: \"HASH\"\n"
    )
}

#[test]
fn name_with_plus() {
    rejected(&with_user("bob+:"), "'+'");
}

#[test]
fn name_with_hash() {
    rejected(&with_user("\"bob#1\":"), "'#'");
}

#[test]
fn name_with_slash() {
    rejected(&with_user("\"a/b\":"), "'/'");
}

#[test]
fn name_with_dollar() {
    rejected(&with_user("\"$sys\":"), "'$'");
}

#[test]
fn name_too_long() {
    rejected(&with_user(&format!("{}:", "n".repeat(65))), "limit is 64");
}

#[test]
fn name_that_is_a_path_part() {
    rejected(&with_user("\"..\":"), "must start with a letter or a digit");
}

#[test]
fn user_and_device_share_a_name() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    password_hash: \"HASH\"\ndevices:\n  bob: # <-\n    certificate: true\n",
        "both a user and a device",
    );
}

#[test]
fn no_credential() {
    rejected(
        "version: 1\nusers:\n  bob: # <-\n    role: observer\n",
        "no credential",
    );
}

#[test]
fn certificate_false_is_no_credential() {
    rejected(
        "version: 1\ndevices:\n  cam: # <-\n    certificate: false\n    publish: [\"cam/#\"]\n",
        "no credential",
    );
}

#[test]
fn two_credentials() {
    rejected(
        "version: 1\ndevices:\n  cam:\n    password_hash: \"HASH\"\n    certificate: true # <-\n",
        "more than one credential",
    );
}

#[test]
fn plaintext_password_is_refused() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    password: hunter2 # <-\n",
        "moat passwd bob --write",
    );
}

#[test]
fn argon2i_hash_is_refused() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    password_hash: \"$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g\" # <-\n",
        "only argon2id",
    );
}

#[test]
fn bcrypt_hash_is_refused() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    password_hash: \"$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW\" # <-\n",
        "unsupported password hash",
    );
}

#[test]
fn garbage_hash_is_refused() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    password_hash: hunter2 # <-\n",
        "not a password hash",
    );
}

#[test]
fn malformed_argon2id_hash_is_refused() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    password_hash: \"$argon2id$v=19$m=19456$c2FsdA$aGFzaA\" # <-\n",
        "argon2 needs m, t and p",
    );
}

#[test]
fn bad_filter() {
    rejected(
        "version: 1\nusers:\n  bob:\n    password_hash: \"HASH\"\n    publish:\n      - \"ok/#\"\n      - \"a/#/b\" # <-\n",
        "invalid topic filter",
    );
}

#[test]
fn placeholder_not_a_whole_level() {
    rejected(
        "version: 1\nusers:\n  bob:\n    password_hash: \"HASH\"\n    subscribe: [\"a/x%u\"] # <-\n",
        "whole topic level",
    );
}

#[test]
fn shared_prefix_in_a_grant() {
    rejected(
        "version: 1\nusers:\n  bob:\n    password_hash: \"HASH\"\n    subscribe: [\"$share/g/jobs/#\"] # <-\n",
        "$share/",
    );
}

#[test]
fn unknown_role() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: admin # <-\n    password_hash: \"HASH\"\n",
        "role \"admin\" is not defined",
    );
}

#[test]
fn role_and_roles_together() {
    rejected(
        "version: 1\nusers:\n  bob:\n    role: observer\n    roles: [observer] # <-\n    password_hash: \"HASH\"\n",
        "either role: or roles:",
    );
}

#[test]
fn custom_role_shadowing_a_preset() {
    rejected(
        "version: 1\nroles:\n  tasmota: # <-\n    publish: [\"x/#\"]\n",
        "is built in",
    );
}

#[test]
fn public_cidr_without_allow_public() {
    rejected(
        "version: 1\nbroker:\n  networks:\n    - private\n    - 8.8.8.0/24 # <-\n",
        "allow_public",
    );
}

#[test]
fn bad_cidr() {
    rejected(
        "version: 1\nbroker:\n  networks: [192.168.1.0/33] # <-\n",
        "neither a named set",
    );
}

#[test]
fn empty_networks() {
    rejected(
        "version: 1\nbroker:\n  networks: [] # <-\n",
        "no client could connect",
    );
}

#[test]
fn bad_size_string() {
    rejected(
        "version: 1\nbroker:\n  limits:\n    max_packet_size: 1 lot # <-\n",
        "invalid size unit",
    );
}

#[test]
fn bad_duration() {
    rejected(
        "version: 1\nbroker:\n  limits:\n    connect_timeout: ten seconds # <-\n",
        "invalid duration",
    );
}

#[test]
fn negative_number() {
    rejected(
        "version: 1\nbroker:\n  limits:\n    max_connections: -5 # <-\n",
        "invalid",
    );
}

#[test]
fn negative_size() {
    rejected(
        "version: 1\nbroker:\n  limits:\n    max_queued_bytes: -1 # <-\n",
        "negative",
    );
}

#[test]
fn zero_limit() {
    rejected(
        "version: 1\nbroker:\n  limits:\n    max_inflight: 0 # <-\n",
        "at least 1",
    );
}

#[test]
fn packet_size_before_auth_above_the_limit() {
    rejected(
        "version: 1\nbroker:\n  limits:\n    max_packet_size: 64KiB\n    max_packet_size_before_auth: 1MiB # <-\n",
        "cannot exceed max_packet_size",
    );
}

#[test]
fn port_zero() {
    rejected(
        "version: 1\nbroker:\n  listen:\n    tls: { address: \"0.0.0.0\", port: 0 } # <-\n",
        "port 0",
    );
}

#[test]
fn bad_listen_address() {
    rejected(
        "version: 1\nbroker:\n  listen:\n    tls: { address: \"999.1.1.1\" } # <-\n",
        "address",
    );
}

#[test]
fn invalid_hostname() {
    rejected(
        "version: 1\nbroker:\n  hostnames: [\"bad_host!\"] # <-\n",
        "not a valid DNS name",
    );
}

#[test]
fn a_plain_listener_on_the_default_tls_port_is_refused() {
    rejected(
        "version: 1\nbroker:\n  listen:\n    plain: { port: 8883 } # <-\ndevices:\n  plug:\n    role: tasmota\n    password_hash: \"HASH\"\n    plaintext: true\n",
        "cannot share port 8883 with the tls listener",
    );
}

#[test]
fn plaintext_without_a_plain_listener() {
    rejected(
        "version: 1\ndevices:\n  plug:\n    role: tasmota\n    password_hash: \"HASH\"\n    plaintext: true # <-\n",
        "no plaintext listener (broker.listen.plain or .ws) is declared",
    );
}

#[test]
fn certificate_identity_on_the_plaintext_listener() {
    rejected(
        "version: 1\nbroker:\n  listen:\n    plain: {}\ndevices:\n  cam:\n    certificate: true\n    role: observer\n    plaintext: true # <-\n",
        "cannot use the plaintext listener",
    );
}

#[test]
fn relative_password_file() {
    rejected(
        "version: 1\nusers:\n  z2m:\n    role: zigbee2mqtt\n    password_file: secrets/z2m # <-\n",
        "absolute path",
    );
}

#[test]
fn commit_interval_without_batched() {
    rejected(
        "version: 1\nbroker:\n  persistence:\n    durability: full\n    commit_interval_ms: 20 # <-\n",
        "only to durability: batched",
    );
}

#[test]
fn unknown_durability() {
    rejected(
        "version: 1\nbroker:\n  persistence:\n    durability: sometimes # <-\n",
        "sometimes",
    );
}

#[test]
fn alias_bomb_is_stopped_by_the_budget() {
    let yaml = "version: 1\n\
        a: &a [x, x, x, x, x, x, x, x, x]\n\
        b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
        c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
        d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
        e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d] # <-\n\
        f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
        g: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    rejected(yaml, "limit exceeded");
}

#[test]
fn deep_nesting_is_stopped_by_the_budget() {
    let mut yaml = String::from("version: 1\nroles: ");
    yaml.push_str(&"[".repeat(40));
    yaml.push_str(&"]".repeat(40));
    yaml.push_str(" # <-\n");
    rejected(&yaml, "depth");
}

#[test]
fn invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.yaml");
    std::fs::write(&path, b"version: 1\nusers:\n  b\xffb: {}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["check", "--manifest"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3 column 4"), "{stderr}");
    assert!(stderr.contains("UTF-8"), "{stderr}");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let yaml = format!(
        "version: 1\nusers:\n  \"a+b\":\n    role: observer\n    password_hash: \"{HASH}\"\n  carol:\n    role: nosuchrole\n    password_hash: \"{HASH}\"\n    publish: [\"x/#/y\"]\n"
    );
    let (code, stderr) = check(&yaml);
    assert_eq!(code, Some(1));
    for line in [3, 7, 9] {
        assert!(
            stderr.contains(&format!("line {line} column")),
            "line {line}:\n{stderr}"
        );
    }
    assert!(stderr.contains("3 errors in the manifest"), "{stderr}");
}

#[test]
fn smart_quotes_from_a_text_editor() {
    // macOS TextEdit with "smart quotes": the password would hold the quotes.
    rejected(
        "version: 1\nusers:\n  ha:\n    password_hash: \"HASH\"\n    publish: [\u{201C}lights/#\u{201D}] # <-\n",
        "typographic quote",
    );
}

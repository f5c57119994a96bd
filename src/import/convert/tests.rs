use super::*;

const ALICE_7: &str = "$7$101$r2g/pSyJleQUWIvt$oroAVLKjIe8ZXwOMSC0+boOsyNTxwi4EL772Qnd261Y0ru25kc2yCJ41/GxDez4mzurcYBMjsXqFDvO+Lp14TA==";

/// Writes `files` into a temp dir and imports its `mosquitto.conf`.
fn run(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Imported, ImportError>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let options = Options {
        manifest_name: "moat.yaml".into(),
        ..Options::default()
    };
    let result = import(&dir.path().join("mosquitto.conf"), &options);
    (dir, result)
}

fn items(notes: &[Note]) -> String {
    notes
        .iter()
        .map(|n| {
            format!(
                "{} | {} | {}",
                n.at.clone().unwrap_or_default(),
                n.item,
                n.reason
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn users_grants_patterns_denies_and_anonymous_rules() {
    let pw = format!("alice:{ALICE_7}\nbob:{ALICE_7}\nbad/name:{ALICE_7}\n");
    let (_d, result) = run(&[
        (
            "mosquitto.conf",
            "listener 1883 127.0.0.1\npassword_file pw\nacl_file acl\nlistener 8883\ncertfile c.pem\nkeyfile k.pem\nfrobnicate 1\n",
        ),
        ("pw", &pw),
        (
            "acl",
            "topic read public/#\nuser alice\ntopic read a/#\ntopic write a/cmd\ntopic deny a/secret\ntopic x/%u\nuser bob\ntopic readwrite b/#\ntopic deny c/#\npattern readwrite u/%u/#\npattern write bad/x%u\n",
        ),
    ]);
    let imported = result.unwrap();
    let yaml = &imported.manifest;
    let r = &imported.report;
    assert_eq!(r.users, ["alice", "bob"]);
    assert!(
        yaml.contains("tls: { address: \"0.0.0.0\", port: 8883 }"),
        "{yaml}"
    );
    assert!(
        yaml.contains("plain: { address: \"127.0.0.1\", port: 1883 }"),
        "{yaml}"
    );
    // alice: a/# overlaps her deny, so only the write and the pattern remain.
    assert!(
        yaml.contains("  \"alice\":\n    password_hash: \"$7$101$"),
        "{yaml}"
    );
    assert!(
        yaml.contains("publish: [\"a/cmd\", \"u/%u/#\"]\n    subscribe: [\"u/%u/#\"]"),
        "{yaml}"
    );
    assert!(
        yaml.contains("publish: [\"b/#\", \"u/%u/#\"]\n    subscribe: [\"b/#\", \"u/%u/#\"]"),
        "{yaml}"
    );
    let dropped = items(&r.not_carried);
    for needle in [
        "acl:1 | topic read public/# | comes before any `user` line",
        "acl:3 | topic read a/# (user alice) | overlaps `topic deny a/secret` (",
        "acl:6 | topic readwrite x/%u (user alice) | mosquitto takes %u/%c",
        "acl:11 | pattern write bad/x%u |",
        "pw:3 | user \"bad/name\" |",
        "mosquitto.conf:7 | frobnicate 1 | unknown directive",
    ] {
        assert!(dropped.contains(needle), "{needle} missing:\n{dropped}");
    }
    let changed = items(&r.changed);
    assert!(
        changed.contains("acl:9 | topic deny c/# | not needed"),
        "{changed}"
    );
    assert!(
        changed.contains("listener 8883 | kept as broker.listen.tls"),
        "{changed}"
    );
}

#[test]
fn no_acl_file_means_full_access_and_limits_carry() {
    let (_d, result) = run(&[
        (
            "mosquitto.conf",
            "listener 1883\nmax_connections 40\npassword_file pw\nmax_queued_messages 8192\nmax_packet_size 1000\nmax_inflight_messages 0\n",
        ),
        ("pw", &format!("alice:{ALICE_7}\n")),
    ]);
    let imported = result.unwrap();
    let yaml = &imported.manifest;
    assert!(
        yaml.contains("publish: [\"#\"]\n    subscribe: [\"#\"]"),
        "{yaml}"
    );
    assert!(yaml.contains("plaintext: true"), "{yaml}");
    for limit in [
        "max_connections: 40",
        "max_queued_messages: 8192",
        "max_packet_size: 1000",
        "max_packet_size_before_auth: 1000",
    ] {
        assert!(yaml.contains(limit), "{limit}: {yaml}");
    }
    let dropped = items(&imported.report.not_carried);
    assert!(
        dropped.contains("max_inflight_messages 0 | 0 means unlimited"),
        "{dropped}"
    );
    assert!(items(&imported.report.changed).contains("no acl_file applied"));
}

#[test]
fn tls_only_and_certificate_devices() {
    let (_d, result) = run(&[
        (
            "mosquitto.conf",
            "per_listener_settings true\nlistener 1883\npassword_file pw\nlistener 8883\ncertfile c\nkeyfile k\nrequire_certificate true\nuse_identity_as_username true\nacl_file acl\n",
        ),
        ("pw", &format!("alice:{ALICE_7}\nlamp:plaintext-pass\n")),
        (
            "acl",
            "user cam\ntopic write cam/state\nuser alice\ntopic read cam/#\nuser lamp\ntopic write lamp/x\n",
        ),
    ]);
    let imported = result.unwrap();
    let yaml = &imported.manifest;
    // lamp's password line is unusable (reported); it does not become a device.
    assert_eq!(imported.report.devices, ["cam"]);
    assert!(items(&imported.report.not_carried).contains("pw:2 | user lamp | not a hash"));
    assert!(
        yaml.contains("devices:\n  \"cam\":\n    certificate: true\n    publish: [\"cam/state\"]"),
        "{yaml}"
    );
    // alice's password file belongs to the plain listener, which has no acl_file.
    assert!(yaml.contains("plaintext: true"), "{yaml}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mosquitto.conf"),
        "listener 1883\npassword_file pw\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("pw"), format!("alice:{ALICE_7}\n")).unwrap();
    let options = Options {
        tls_only: true,
        manifest_name: "m".into(),
        ..Options::default()
    };
    let imported = import(&dir.path().join("mosquitto.conf"), &options).unwrap();
    assert!(
        !imported.manifest.contains("plain"),
        "{}",
        imported.manifest
    );
}

#[test]
fn unlimited_connections_are_reported_not_dropped_silently() {
    let (_d, result) = run(&[
        (
            "mosquitto.conf",
            "listener 1883\nmax_connections -1\npassword_file pw\n",
        ),
        ("pw", &format!("alice:{ALICE_7}\n")),
    ]);
    let imported = result.unwrap();
    let dropped = items(&imported.report.not_carried);
    assert!(
        dropped.contains("mosquitto.conf:2 | max_connections -1 | unlimited"),
        "{dropped}"
    );
    assert!(!imported.manifest.contains("max_connections"));
}

#[test]
fn a_manifest_moat_would_refuse_is_an_error() {
    // No TLS listener, so moat's goes to 8883, where the plain one already is.
    let (_d, result) = run(&[("mosquitto.conf", "listener 8883\n")]);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("does not validate"), "{err}");
    assert!(err.contains("cannot share port 8883"), "{err}");
}

#[test]
fn anonymous_is_refused_per_listener_too() {
    let (_d, result) = run(&[(
        "mosquitto.conf",
        "per_listener_settings true\nlistener 1883\nallow_anonymous false\nlistener 1884\nallow_anonymous true\n",
    )]);
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("mosquitto.conf:5: allow_anonymous true"),
        "{err}"
    );
    assert!(err.contains("mosquitto_passwd"), "{err}");
}

#[test]
fn missing_password_file_names_the_line() {
    let (_d, result) = run(&[("mosquitto.conf", "listener 1883\n\npassword_file nope\n")]);
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("mosquitto.conf:3: cannot read password file"),
        "{err}"
    );
}

//! The NixOS module's units, run by systemd. `nix/units.nix` holds the service
//! settings and the ordering `nix/module.nix` gives its units; this test evaluates
//! that file with `nix-instantiate`, renders it as NixOS renders `serviceConfig` and
//! the ordering options, and boots a Debian guest (made by `tests/systemd_guest.sh`)
//! in qemu with systemd as PID 1 and this build's `moat`, both ways the module gets
//! a manifest.
//!
//! The prebuilt image's way: the root unit imports the Wi-Fi settings and the
//! manifest from the card (a real FAT partition, mounted as nixpkgs' sd-image.nix
//! declares it, the files as Windows' Notepad saves them) and scrubs it,
//! `moat` applies the ruleset with its one ambient capability, and the broker starts
//! under the whole sandbox (`Type=notify`). A script in the guest then checks what a
//! home would meet:
//!
//! - every unit is active, each started after what it is ordered after had finished
//!   (the import, then the firewall, then the broker), and the state directory is
//!   the broker's alone;
//! - the card's `wpa_supplicant.conf` is where NixOS's Wi-Fi unit reads it (a
//!   stand-in here, no radio) before that unit starts, readable by root alone,
//!   without the `ctrl_interface=` line NixOS cannot use, and gone from the card;
//! - the certificate names the host (`moat-vm.local`) and its LAN address, read
//!   under `ProcSubset=pid` and `ProtectHostname=`;
//! - a real client (`mosquitto_pub`/`mosquitto_sub`, TLS) gets a retained message
//!   through;
//! - the documented password change works at once: `moat passwd NAME --write` as
//!   root over SSH, then `moat reload`; so does a device added over SSH with
//!   `moat provision` as root (its client certificate logs in);
//! - `IPAddressDeny=`/`IPAddressAllow=` hold in the kernel: the manifest lets a
//!   public network in, so with moat's nftables table removed only the unit's fence
//!   can stop a client from there, and it gets no TCP handshake; with that network
//!   added to `IPAddressAllow=` it connects, and from the LAN it always does;
//!   `systemctl reload moat-firewall` puts the table back;
//! - a `password_file` handed over by `LoadCredential=` logs in;
//! - `systemctl stop` ends the broker cleanly: no restart, no seccomp kill;
//! - and after a second boot from the same disk: the same again, plus the retained
//!   message, the changed password and the same certificate; the first boot left a
//!   `moat.yaml.txt` on the card, so the import's unit fails and says so in
//!   `moat-error.txt` there, while the firewall and the broker run.
//!
//! A declared manifest (`services.moat.manifest`, linked to `/etc/moat/moat.yaml`,
//! no first-boot unit): the units come up with the state directory made by
//! `StateDirectory=` alone, a round trip works, and what `nixos-rebuild switch` does
//! with a new manifest (the file replaced, both units reloaded) lets a new user in;
//! a refused publish shows in `moat denials` with the manifest line that allows it;
//! a bridge to a public address carries nothing until the address is added to
//! `IPAddressAllow=` (doctor's fix names the option), then carries a message.
//!
//! In both, `moat doctor` as root reports no FAIL on the running appliance.
//!
//! Not covered: what NixOS adds around the units (its own default dependencies,
//! nixpkgs' nftables unit, the users and tmpfiles it generates, the SD image,
//! the Wi-Fi radio and wpa_supplicant itself, avahi), which only a NixOS build can
//! test (nix/tests/); the guest's
//! systemd is Debian 13's 257, one release older than nixpkgs'.
//!
//! Needs root, qemu-system-x86_64, nix-instantiate, mkfs.ext4, mkfs.vfat, mcopy and
//! the guest's root file system (`tests/systemd_guest.sh` installs and makes them); without them it says why and passes, except under CI, where a
//! missing piece fails. `MOAT_GUEST_ACCEL=kvm` boots with KVM (default TCG: a
//! nested /dev/kvm here does not boot a guest); the boot takes about 10 s under TCG.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::guest::{Accel, Kernel, Vm};
use common::netns::sh;

const MOAT: &str = "/usr/local/bin/moat";
const STATE: &str = "/var/lib/moat";
const CARD: &str = "/boot/firmware";
const HOST_NAME: &str = "moat-vm";
const LAN: &str = "192.168.77.2";
const CARD_PASSWORD: &str = "card-Password-4711";
const NEW_PASSWORD: &str = "changed-Password-0815";
/// Zigbee2MQTT's password, a file outside the store handed over by `LoadCredential=`.
const Z2M_PASSWORD: &str = "z2m-Secret-2024";
const Z2M_SECRET: &str = "/etc/moat-secrets/zigbee2mqtt";
/// NixOS's Wi-Fi unit for the module's default interface (module.nix `wifiUnit`);
/// the guest has a stand-in that records what it found when it started.
const WIFI_UNIT: &str = "wpa_supplicant-wlan0.service";
/// The bridge's remote: a public test address (RFC 5737), outside the unit's fence.
const CLOUD: &str = "203.0.113.5";

/// The root file system `tests/systemd_guest.sh` makes.
fn guest_root() -> PathBuf {
    std::env::var_os("MOAT_SYSTEMD_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("systemd-guest"))
}

/// Why the test cannot run here, if it cannot.
fn missing(root: &Path) -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (mount, mkfs)".into());
    }
    for tool in [
        "qemu-system-x86_64",
        "nix-instantiate",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
    ] {
        if !common::have(tool) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    (!root.join(".complete").is_file()).then(|| {
        format!(
            "no guest root file system at {} (run tests/systemd_guest.sh)",
            root.display()
        )
    })
}

/// The module's two ways to a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// The prebuilt image (`manifest = null`): `moat-firstboot` imports the card's.
    Card,
    /// `services.moat.manifest = ./moat.yaml`: a store file linked to
    /// `/etc/moat/moat.yaml`; a rebuild replaces the link and reloads the units.
    Declared,
}

impl Setup {
    fn manifest_path(self) -> &'static str {
        match self {
            Setup::Card => "/var/lib/moat/moat.yaml",
            Setup::Declared => "/etc/moat/moat.yaml",
        }
    }
}

/// `nix/units.nix` with the guest's paths and the module's defaults.
fn units(setup: Setup) -> Value {
    let dir = env!("CARGO_MANIFEST_DIR");
    let manifest = setup.manifest_path();
    // The image's test hands Zigbee2MQTT's password over as a credential, runs the
    // card's import (the module's `firstbootActive`: no declared manifest) and has
    // Wi-Fi (`services.moat.wifi.enable`), whose unit the import must precede; the
    // declared one hands over the bridge's password.
    let (credentials, firstboot, wifi_unit) = match setup {
        Setup::Card => (
            format!("{{ zigbee2mqtt = \"{Z2M_SECRET}\"; }}"),
            true,
            format!("[ \"{WIFI_UNIT}\" ]"),
        ),
        Setup::Declared => (
            "{ cloud = \"/etc/moat-secrets/cloud\"; }".to_string(),
            false,
            "[ ]".to_string(),
        ),
    };
    let expr = format!(
        r#"import {dir}/nix/units.nix {{
          moat = "{MOAT}";
          coreutilsBin = "/usr/bin";
          gnusedBin = "/usr/bin";
          stateDir = "{STATE}";
          manifestPath = "{manifest}";
          allowedAddresses = import {dir}/nix/private-ranges.nix;
          memoryMax = "256M";
          bootPartition = "{CARD}";
          credentials = {credentials};
          firstboot = {firstboot};
          firstbootBefore = {wifi_unit};
        }}"#
    );
    let out = sh(&[
        "nix-instantiate",
        "--eval",
        "--strict",
        "--json",
        "--expr",
        &expr,
    ]);
    serde_json::from_slice(&out.stdout).expect("nix-instantiate prints JSON")
}

/// One `Key=value` line per value, as nixpkgs writes `serviceConfig`
/// (nixos/lib/systemd-lib.nix, `attrsToSection` and `toOption`): a list gives one
/// line per element, booleans are `true`/`false`, numbers and strings as they are.
fn section(settings: &Value) -> String {
    let mut text = String::new();
    for (key, value) in settings.as_object().expect("an attribute set") {
        let values = match value {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for value in values {
            let value = match value {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => panic!("{key}: no systemd rendering for {other}"),
            };
            text.push_str(&format!("{key}={value}\n"));
        }
    }
    text
}

/// A unit's `[Unit]` section from its ordering in `nix/units.nix` (`order.<unit>`),
/// as NixOS writes it (nixos/lib/systemd-lib.nix, `unitConfig`): each of `requires`,
/// `wants`, `after`, `before` and `conflicts` that is not empty becomes one line
/// with its units space-separated (`toString`), then `unitConfig` as
/// `attrsToSection` writes it.
fn unit_section(order: &Value) -> String {
    let mut settings = serde_json::Map::new();
    for (option, key) in [
        ("requires", "Requires"),
        ("wants", "Wants"),
        ("after", "After"),
        ("before", "Before"),
        ("conflicts", "Conflicts"),
    ] {
        let Some(units) = order.get(option) else {
            continue;
        };
        let units: Vec<&str> = units
            .as_array()
            .expect("a list")
            .iter()
            .map(|unit| unit.as_str().expect("a unit name"))
            .collect();
        if !units.is_empty() {
            settings.insert(key.into(), units.join(" ").into());
        }
    }
    if let Some(Value::Object(config)) = order.get("unitConfig") {
        settings.extend(config.clone());
    }
    format!("[Unit]\n{}", section(&Value::Object(settings)))
}

/// `Environment=` lines, as NixOS writes a unit's `environment`.
fn environment(vars: &[&Value]) -> String {
    let mut text = String::new();
    for vars in vars {
        for (name, value) in vars.as_object().expect("an attribute set") {
            let value = value.as_str().expect("a string");
            text.push_str(&format!("Environment=\"{name}={value}\"\n"));
        }
    }
    text
}

/// The card's manifest, as a user writes it: a plain password, hashed at import, and
/// a `password_file` that is the broker's systemd credential (`services.moat.credentials`).
/// It also lets in 203.0.113.0/24, a public network the unit's `IPAddressAllow=` (the
/// module's default, private ranges) does not: so the broker's own SYN filter and
/// admission check pass a client from there, and only the unit's fence can stop it.
const CARD_MANIFEST: &str = "version: 1
broker:
  hostnames: [moat.home.arpa]
  allow_public: true
  networks: [loopback, private, 203.0.113.0/24]
users:
  tester:
    password: \"{PASSWORD}\"
    publish: [\"check/#\"]
    subscribe: [\"check/#\"]
  zigbee2mqtt:
    password_file: /run/credentials/moat.service/zigbee2mqtt
    subscribe: [\"check/#\"]
";

/// The guest's checks, run as root once moat.service's start job is over (READY=1,
/// or its failure). Each finding is one `moat-check: BOOT.key=value` line on the
/// console. The first boot changes a password and tries the fences; the second
/// finds the first's state: the retained message, the new password, the same
/// certificate.
const CHECK_HEAD: &str = r#"#!/bin/bash
set -u
mkdir -p /var/lib/moat-check
boot=$(( $(cat /var/lib/moat-check/boot 2>/dev/null || echo 0) + 1 ))
echo "$boot" > /var/lib/moat-check/boot
say() { echo "moat-check: $boot.$*"; }
ca=$MOAT_STATE/ca.pem
tls=(-h "$LAN" -p 8883 --cafile "$ca")
receive() {  # USER PASSWORD: the retained check/ping, as mosquitto_sub prints it
  mosquitto_sub "${tls[@]}" -u "$1" -P "$2" -t check/ping -C 1 -W "${3:-20}" 2>&1 | head -1
}
eventually() {  # USER PASSWORD: receive, retried for 20 s while a reload lands
  local got=""
  for _ in $(seq 20); do
    got=$(receive "$1" "$2" 5)
    [ "$got" = hello ] && break
    sleep 1
  done
  echo "$got"
}
say "units=$(systemctl is-active moat-firstboot.service moat-firewall.service moat.service | paste -sd,)"
# The boot order the units declare: 1 when FIRST was done (active, for a oneshot,
# or failed) before SECOND began to start.
done_before() {  # FIRST SECOND
  local done started
  done=$(systemctl show -P ActiveEnterTimestampMonotonic "$1")
  [ "$done" -gt 0 ] || done=$(systemctl show -P InactiveEnterTimestampMonotonic "$1")
  started=$(systemctl show -P InactiveExitTimestampMonotonic "$2")
  [ "$done" -gt 0 ] && [ "$done" -le "$started" ] && echo 1 || echo 0
}
say "firewall-then-broker=$(done_before moat-firewall.service moat.service)"
say "state=$(stat -c '%U:%G:%a' "$MOAT_STATE")"
say "not-moat=$(find "$MOAT_STATE" ! -user moat | paste -sd,)"
if nft list table inet moat >/dev/null 2>&1; then say "table=loaded"; else say "table=missing"; fi
verify() {
  openssl s_client -connect "$LAN:8883" -CAfile "$ca" -verify_return_error "$@" </dev/null 2>&1 \
    | grep -o 'Verification: OK' | head -1
}
say "verify-ip=$(verify -verify_ip "$LAN")"
say "verify-name=$(verify -verify_hostname "$HOST_NAME.local")"
fingerprint=$(openssl s_client -connect "$LAN:8883" </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256)

"#;

/// The Wi-Fi settings a user drops on the card, as Raspberry Pi OS documents them:
/// with a `ctrl_interface=` line for a group NixOS does not have.
const CARD_WIFI: &str = "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev
update_config=1
country=DE

network={
 ssid=\"moat-test\"
 psk=\"not-a-real-passphrase\"
}
";

/// The image's checks: the first boot changes a password, adds a device and tries
/// the fences; the second finds the first's state.
const CARD_CHECKS: &str = r#"say "firstboot-then-firewall=$(done_before moat-firstboot.service moat-firewall.service)"
say "firstboot-then-wifi=$(done_before moat-firstboot.service wpa_supplicant-wlan0.service)"
if [ "$boot" = 1 ]; then
  # The card's Wi-Fi settings, where NixOS's wpa_supplicant reads them, before it
  # started; the PSK readable by root alone, the group line NixOS lacks dropped.
  wifi=/etc/wpa_supplicant/imperative.conf
  say "wifi-saw=$(cat /run/moat-wifi-saw)"
  say "wifi=$(stat -c '%U:%a' /etc/wpa_supplicant "$wifi" | paste -sd,)"
  # ctrl_interface=, the card file's first line, came after its byte order mark.
  say "wifi-lines=$(grep -c ctrl_interface "$wifi"),$(grep -c 'ssid="moat-test"' "$wifi"),$(grep -c $'\r' "$wifi"),$(grep -c $'\xEF\xBB\xBF' "$wifi")"
  mosquitto_pub "${tls[@]}" -u tester -P "$CARD_PASSWORD" -t check/ping -m hello -r -q 1 2>&1 | sed 's/^/moat-client: /'
  say "round-trip=$(receive tester "$CARD_PASSWORD")"
  echo "$fingerprint" > /var/lib/moat-check/fingerprint
  # What the import left on the FAT card: the CA and the setup report, and the
  # manifest with its password scrubbed.
  say "card=$(ls "$CARD" | sort | paste -sd,)"
  say "card-plaintext=$(grep -c "$CARD_PASSWORD" "$CARD/moat.yaml")"

  # The password change docs/appliance.md gives, as root over SSH.
  printf '%s' "$NEW_PASSWORD" | moat passwd tester --stdin --write 2>&1 | sed 's/^/moat-passwd: /'
  say "manifest=$(stat -c '%U:%G:%a' "$MOAT_MANIFEST")"
  moat reload 2>&1 | sed 's/^/moat-reload: /'
  say "new-password=$(eventually tester "$NEW_PASSWORD")"
  say "old-password=$(receive tester "$CARD_PASSWORD" 5)"

  # A device with a client certificate, added over SSH as root: `moat provision`
  # makes its key as root, which must end up the broker's.
  printf 'devices:\n  sensor:\n    certificate: true\n    subscribe: ["check/#"]\n' >> "$MOAT_MANIFEST"
  moat provision 2>&1 | sed 's/^/moat-provision: /'
  say "after-provision=$(find "$MOAT_STATE" ! -user moat | paste -sd,)"
  moat reload 2>&1 | sed 's/^/moat-reload: /'

  # The unit's own fence, alone: the manifest lets 203.0.113.0/24 in, so without
  # moat's table only IPAddressDeny/Allow can stop a client from there.
  nft delete table inet moat
  ip addr add 203.0.113.2/32 dev lan0
  timeout 10 openssl s_client -bind 203.0.113.2:0 -connect "$LAN:8883" </dev/null >/dev/null 2>&1
  say "outside=$?"
  # The control: the same unit with that network added to IPAddressAllow= (what
  # widening services.moat.allowedAddresses and a rebuild do) lets it through.
  mkdir -p /run/systemd/system/moat.service.d
  printf '[Service]\nIPAddressAllow=203.0.113.0/24\n' > /run/systemd/system/moat.service.d/widen.conf
  systemctl daemon-reload && systemctl restart moat.service
  timeout 10 openssl s_client -bind 203.0.113.2:0 -connect "$LAN:8883" </dev/null >/dev/null 2>&1
  say "outside-allowed=$?"
  rm /run/systemd/system/moat.service.d/widen.conf
  systemctl daemon-reload && systemctl restart moat.service
  say "inside=$(timeout 10 openssl s_client -bind "$LAN:0" -connect "$LAN:8883" -CAfile "$ca" </dev/null 2>&1 | grep -c 'Verification: OK')"
  systemctl reload moat-firewall.service
  if nft list table inet moat >/dev/null 2>&1; then say "table-reloaded=loaded"; else say "table-reloaded=missing"; fi
  # For the second boot: the manifest again, under the name Notepad's "Text
  # Documents" gives it. First boot names it on the card and fails; nothing else
  # may stop for it.
  cp "$CARD/moat.yaml" "$CARD/moat.yaml.txt"
else
  say "firstboot-result=$(systemctl show -P Result moat-firstboot.service)"
  say "card-note=$(grep -c 'moat.yaml.txt on the card was not read: rename it to moat.yaml' "$CARD/moat-error.txt")"
  say "after-reboot=$(receive tester "$NEW_PASSWORD")"
  say "old-password=$(receive tester "$CARD_PASSWORD" 5)"
  if [ "$fingerprint" = "$(cat /var/lib/moat-check/fingerprint)" ]; then
    say "certificate=same"
  else
    say "certificate=changed"
  fi
fi
say "credential=$(receive zigbee2mqtt "$Z2M_PASSWORD")"
device=""
for _ in $(seq 10); do
  device=$(mosquitto_sub "${tls[@]}" --cert "$MOAT_STATE/devices/sensor/cert.pem" \
    --key "$MOAT_STATE/devices/sensor/key.pem" -t check/ping -C 1 -W 5 2>&1 | head -1)
  [ "$device" = hello ] && break
  sleep 1
done
say "device=$device"

"#;

/// The declared manifest's checks: a round trip, then what `nixos-rebuild switch`
/// does with a new manifest (the link in /etc replaced, the units reloaded).
const DECLARED_CHECKS: &str = r#"mosquitto_pub "${tls[@]}" -u tester -P "$PASSWORD" -t check/ping -m hello -r -q 1 2>&1 | sed 's/^/moat-client: /'
say "round-trip=$(receive tester "$PASSWORD")"
cat "$MOAT_MANIFEST" /etc/moat-check/second.yaml > /etc/moat/.next.yaml
chmod 0444 /etc/moat/.next.yaml
mv /etc/moat/.next.yaml "$MOAT_MANIFEST"
systemctl reload moat-firewall.service moat.service
say "rebuild=$(eventually second "$PASSWORD")"
# A refused publish, found with the line that would allow it (`moat denials` reads
# what the broker writes every 5 s).
mosquitto_pub "${tls[@]}" -u tester -P "$PASSWORD" -t lights/kitchen -m off -q 1 2>&1 | sed 's/^/moat-client: /'
denial=""
for _ in $(seq 20); do
  denial=$(moat denials 2>&1 | grep -cF 'allow with: users.tester.publish: ["lights/kitchen"]')
  [ "$denial" != 0 ] && break
  sleep 1
done
moat denials 2>&1 | sed 's/^/moat-denials: /'
say "denial=$denial"

# The bridge. Its remote, a second moat on a public address, run here as root.
ip addr add "$CLOUD/32" dev lan0
chmod 700 /var/lib/cloud
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072 \
  moat --manifest /etc/cloud/moat.yaml --state /var/lib/cloud serve >/var/log/cloud.log 2>&1 &
for _ in $(seq 30); do ss -ltn | grep -q "$CLOUD:8884" && break; sleep 1; done
bridged() {  # publishes sensors/temp here; prints what the cloud's subscriber got
  local got=""
  for _ in $(seq "$1"); do
    mosquitto_sub -h "$CLOUD" -p 8884 --cafile /var/lib/cloud/ca.pem -u phone -P "$PASSWORD" \
      -t 'home/sensors/#' -C 1 -W 5 >/tmp/cloud.out 2>&1 &
    sleep 1
    mosquitto_pub "${tls[@]}" -u tester -P "$PASSWORD" -t sensors/temp -m 21 -q 1
    wait
    got=$(head -1 /tmp/cloud.out)
    [ "$got" = 21 ] && break
  done
  echo "$got"
}
# Outside the unit's IPAddressAllow=, the bridge cannot connect out, and doctor's
# fix names the option.
say "bridge-fenced=$(bridged 2)"
moat doctor 2>&1 | grep -A1 ' bridges ' | sed 's/^/moat-doctor-bridge: /'
say "bridge-doctor=$(moat doctor 2>&1 | grep -A1 ' bridges ' | grep -c 'services.moat.allowedAddresses')"
journalctl -b -o cat -u moat.service | grep -i bridge | tail -3 | sed 's/^/moat-bridge-log: /'
# With its address in IPAddressAllow= (docs/bridge.md: services.moat.allowedAddresses),
# after the restart a rebuild does, it carries the message.
mkdir -p /run/systemd/system/moat.service.d
printf '[Service]\nIPAddressAllow=%s\n' "$CLOUD" > /run/systemd/system/moat.service.d/cloud.conf
systemctl daemon-reload && systemctl restart moat.service
say "bridge-allowed=$(bridged 10)"
"#;

const CHECK_TAIL: &str = r#"moat doctor 2>&1 | sed 's/^/moat-doctor: /'
say "doctor-fail=$(moat doctor 2>&1 | grep -c '^FAIL')"
systemctl stop moat.service
say "stop=$(systemctl show moat.service -p Result -p NRestarts -p ExecMainCode -p ExecMainStatus | sort | cut -d= -f2 | paste -sd,)"
journalctl -b -k -o cat | grep "type=1326" | sed 's/^/moat-kernel: /'
say "seccomp=$(journalctl -b -k -o cat | grep -c "type=1326")"
journalctl -b -o cat -u moat-firstboot.service -u moat-firewall.service -u moat.service | sed "s/^/moat-journal: $boot: /"
say "done=yes"
"#;

/// A declared manifest, as `moat check` passes it at build time: hashes only. It
/// bridges `sensors/#` out to a "cloud" broker on a public address, which the unit's
/// `IPAddressAllow=` (the module's default, private ranges) does not name.
fn declared_manifest() -> String {
    format!(
        "version: 1\n\
         broker:\n  hostnames: [moat.home.arpa]\n\
         bridges:\n  cloud:\n    address: {CLOUD}\n    port: 8884\n\
         \x20   tls: {{ ca_file: /etc/moat/cloud-ca.pem }}\n\
         \x20   username: home-bridge\n\
         \x20   password_file: /run/credentials/moat.service/cloud\n\
         \x20   topics:\n      - {{ topic: \"sensors/#\", direction: out, remote_prefix: \"home/\" }}\n\
         users:\n  tester:\n    password_hash: \"{hash}\"\n\
         \x20   publish: [\"check/#\", \"sensors/#\"]\n    subscribe: [\"check/#\"]\n",
        hash = common::password_hash()
    )
}

/// The "cloud" broker at the bridge's other end: a second moat, which the guest's
/// check script runs as root outside any unit, on a public test address.
fn cloud_manifest() -> String {
    format!(
        "version: 1\n\
         broker:\n  hostnames: [cloud.example]\n  addresses: [{CLOUD}]\n\
         \x20 allow_public: true\n  networks: [loopback, private, {CLOUD}]\n\
         \x20 listen: {{ tls: {{ address: {CLOUD}, port: 8884 }} }}\n\
         users:\n  home-bridge:\n    password_hash: \"{hash}\"\n    publish: [\"home/#\"]\n\
         \x20 phone:\n    password_hash: \"{hash}\"\n    subscribe: [\"home/#\"]\n",
        hash = common::password_hash()
    )
}

/// The cloud broker's manifest and state, provisioned here (its CA must exist before
/// the guest's broker reads the bridge's `ca_file`), and the bridge's secret.
fn stage_cloud(work: &Path, files: &mut BTreeMap<String, (u32, String)>) {
    let manifest = work.join("cloud.yaml");
    let state = work.join("cloud-state");
    std::fs::write(&manifest, cloud_manifest()).unwrap();
    common::cli::ok(&common::cli::run_moat(&manifest, &state, &["provision"]));
    files.insert("etc/cloud/moat.yaml".into(), (0o600, cloud_manifest()));
    for name in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        let text = std::fs::read_to_string(state.join(name)).unwrap();
        files.insert(format!("var/lib/cloud/{name}"), (0o600, text));
    }
    let ca = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    files.insert("etc/moat/cloud-ca.pem".into(), (0o644, ca));
    files.insert(
        "etc/moat-secrets/cloud".into(),
        (0o600, format!("{}\n", common::PASSWORD)),
    );
}

/// What the module adds for the card (`firstbootActive`): the state directory's
/// tmpfiles rule, the import script and its unit; and the card itself.
fn stage_card(units: &Value, env: &str, files: &mut BTreeMap<String, (u32, String)>) {
    let unit = |text: String| (0o644, text);
    files.insert(
        "etc/tmpfiles.d/moat.conf".into(),
        unit(format!("{}\n", units["stateDirRule"].as_str().unwrap())),
    );
    // The module's first-boot steps (`firstbootSteps`), Wi-Fi's first, each a
    // script as `pkgs.writeShellScript` makes it.
    for (script, text) in [
        ("import-wifi", "importWifiScript"),
        ("firstboot", "importManifestScript"),
    ] {
        files.insert(
            format!("usr/local/lib/moat/{script}"),
            (
                0o755,
                format!("#!/bin/bash\n{}", units[text].as_str().unwrap()),
            ),
        );
    }
    // The card's FAT partition, as nixpkgs' sd-image.nix declares it (`nofail`,
    // `noauto`: mounted when the first-boot unit's RequiresMountsFor= asks).
    files.insert(
        "etc/fstab".into(),
        unit(format!(
            "/dev/disk/by-label/FIRMWARE {CARD} vfat nofail,noauto 0 0\n"
        )),
    );
    files.insert(format!("{}/.mount-point", &CARD[1..]), unit(String::new()));
    files.insert(
        "etc/systemd/system/moat-firstboot.service".into(),
        unit(format!(
            "{}[Service]\n{env}{}ExecStart=/usr/local/lib/moat/import-wifi\n\
             ExecStart=/usr/local/lib/moat/firstboot\n",
            unit_section(&units["order"]["firstboot"]),
            section(&units["firstboot"])
        )),
    );
    // Wi-Fi: a stand-in for NixOS's wpa_supplicant unit (no radio here) that
    // records whether the imported settings were there when it started.
    files.insert(
        format!("etc/systemd/system/{WIFI_UNIT}"),
        unit(
            "[Service]\nType=oneshot\nRemainAfterExit=true\n\
             ExecStart=/bin/sh -c 'if [ -f /etc/wpa_supplicant/imperative.conf ]; \
             then echo present; else echo missing; fi > /run/moat-wifi-saw'\n"
                .into(),
        ),
    );
    files.insert(
        "etc/systemd/system/moat-test.target.d/wifi.conf".into(),
        unit(format!("[Unit]\nWants={WIFI_UNIT}\n")),
    );
    files.insert(Z2M_SECRET[1..].into(), (0o600, format!("{Z2M_PASSWORD}\n")));
}

/// Files the test adds to the guest's root, path (relative) → (mode, content).
fn stage(units: &Value, setup: Setup, work: &Path) -> BTreeMap<String, (u32, String)> {
    let env = environment(&[&units["environment"]]);
    let unit = |text: String| (0o644, text);
    let mut files = BTreeMap::new();
    files.insert("etc/hostname".into(), unit(format!("{HOST_NAME}\n")));
    files.insert(
        "etc/sysusers.d/moat.conf".into(),
        unit(format!("u moat - \"moat broker\" {STATE}\n")),
    );
    let checks = match setup {
        Setup::Card => {
            stage_card(units, &env, &mut files);
            CARD_CHECKS
        }
        Setup::Declared => {
            files.insert(
                setup.manifest_path()[1..].into(),
                (0o444, declared_manifest()),
            );
            stage_cloud(work, &mut files);
            files.insert(
                "etc/moat-check/second.yaml".into(),
                unit(format!(
                    "  second:\n    password_hash: \"{}\"\n    subscribe: [\"check/#\"]\n",
                    common::password_hash()
                )),
            );
            DECLARED_CHECKS
        }
    };
    files.insert(
        "etc/systemd/system/moat-firewall.service".into(),
        unit(format!(
            "{}[Service]\nEnvironment=\"PATH=/usr/sbin:/usr/bin\"\n{env}{}",
            unit_section(&units["order"]["firewall"]),
            section(&units["firewall"])
        )),
    );
    files.insert(
        "etc/systemd/system/moat.service".into(),
        unit(format!(
            "{}[Service]\n{env}{}{}",
            unit_section(&units["order"]["broker"]),
            environment(&[&units["brokerEnvironment"]]),
            section(&units["broker"])
        )),
    );
    // The LAN, up before the broker (which is after network.target): an interface
    // with a private address.
    files.insert(
        "etc/systemd/system/moat-lan.service".into(),
        unit(format!(
            "[Unit]\nBefore=network.target\n\
             [Service]\nType=oneshot\nRemainAfterExit=true\n\
             ExecStart=/usr/sbin/ip link add lan0 type dummy\n\
             ExecStart=/usr/sbin/ip addr add {LAN}/24 dev lan0\n\
             ExecStart=/usr/sbin/ip link set lan0 up\n"
        )),
    );
    files.insert(
        "usr/local/lib/moat/check".into(),
        (0o755, [CHECK_HEAD, checks, CHECK_TAIL].concat()),
    );
    files.insert(
        "etc/systemd/system/moat-check.service".into(),
        unit(format!(
            "[Unit]\nWants=moat.service\nAfter=moat.service\n\
             SuccessAction=poweroff-force\nFailureAction=poweroff-force\n\
             [Service]\nType=oneshot\nExecStart=/usr/local/lib/moat/check\n\
             StandardOutput=tty\nStandardError=tty\nTTYPath=/dev/ttyS0\n{env}\
             Environment=\"LAN={LAN}\" \"HOST_NAME={HOST_NAME}\" \"CARD={CARD}\"\n\
             Environment=\"CARD_PASSWORD={CARD_PASSWORD}\" \"NEW_PASSWORD={NEW_PASSWORD}\"\n\
             Environment=\"Z2M_PASSWORD={Z2M_PASSWORD}\" \"PASSWORD={}\" \"CLOUD={CLOUD}\"\n",
            common::PASSWORD
        )),
    );
    files.insert(
        "etc/systemd/system/moat-test.target".into(),
        unit(
            "[Unit]\nRequires=basic.target\nAfter=basic.target\n\
             Wants=moat-lan.service moat-firstboot.service moat-firewall.service \
             moat.service moat-check.service\n"
                .into(),
        ),
    );
    files
}

/// The guest's disk: its root file system with `files` and this build's moat laid
/// over it (a read-only overlay mount, so the root stays as made), as ext4.
fn disk(root: &Path, files: &BTreeMap<String, (u32, String)>, work: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let upper = work.join("stage");
    for (path, (mode, text)) in files {
        let path = upper.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let bin = upper.join(&MOAT[1..]);
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(common::moat_bin(), &bin).unwrap();
    let merged = work.join("merged");
    std::fs::create_dir(&merged).unwrap();
    let lower = format!("lowerdir={}:{}", upper.display(), root.display());
    sh(&[
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        &lower,
        merged.to_str().unwrap(),
    ]);
    let image = work.join("root.img");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&merged)
        .arg(&image)
        .arg("1536M")
        .output()
        .unwrap();
    sh(&["umount", merged.to_str().unwrap()]);
    assert!(
        made.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    image
}

/// The SD card's FAT partition with the user's `moat.yaml` on it, made as a PC
/// would make it (mkfs.vfat, label `FIRMWARE` as nixpkgs' sd-image.nix gives it).
fn card(work: &Path) -> PathBuf {
    let image = work.join("card.img");
    sh(&["truncate", "-s", "32M", image.to_str().unwrap()]);
    sh(&["mkfs.vfat", "-n", "FIRMWARE", image.to_str().unwrap()]);
    // As Windows' Notepad can save them: a UTF-8 byte order mark, CRLF line ends.
    let windows = |text: &str| format!("\u{feff}{}", text.replace('\n', "\r\n"));
    for (name, text) in [
        (
            "moat.yaml",
            windows(&CARD_MANIFEST.replace("{PASSWORD}", CARD_PASSWORD)),
        ),
        ("wpa_supplicant.conf", windows(CARD_WIFI)),
    ] {
        let file = work.join(name);
        std::fs::write(&file, text).unwrap();
        sh(&[
            "mcopy",
            "-i",
            image.to_str().unwrap(),
            file.to_str().unwrap(),
            &format!("::/{name}"),
        ]);
    }
    image
}

/// The newest file in `<root>/boot` whose name starts with `prefix`.
fn boot_file(root: &Path, prefix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("boot"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no {prefix}* in {}", root.display()))
}

/// The `moat-check:` findings on the console, key → value.
fn findings(console: &str) -> BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|line| line.split_once("moat-check: "))
        .filter_map(|(_, finding)| finding.split_once('='))
        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
        .collect()
}

/// Boots the guest from `disks` (the root first) once, until its checks say `BOOT.done`; the console.
fn boot(root: &Path, disks: &[PathBuf], number: u32) -> String {
    let kernel = Kernel {
        vmlinuz: boot_file(root, "vmlinuz-"),
        modules: root.join("lib/modules"),
    };
    let accel = match std::env::var("MOAT_GUEST_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::TcgOneThread,
    };
    let mut vm = Vm::boot_with(
        &kernel,
        &boot_file(root, "initrd.img-"),
        accel,
        "root=/dev/vda rw systemd.unit=moat-test.target",
        &disks
            .iter()
            .flat_map(|disk| {
                [
                    "-drive".to_string(),
                    format!("file={},if=virtio,format=raw", disk.display()),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let finished = vm.wait_for(
        &format!("moat-check: {number}.done=yes"),
        Duration::from_secs(420),
    );
    let console = vm.console();
    vm.kill();
    assert!(
        finished,
        "boot {number}: the guest did not finish its checks\n{console}"
    );
    console
}

/// Asserts each `(key, value)` among boot `number`'s findings.
fn expect(found: &BTreeMap<String, String>, number: u32, wanted: &[(&str, &str)], context: &str) {
    for (key, want) in wanted {
        let key = format!("{number}.{key}");
        assert_eq!(
            found.get(&key).map(String::as_str),
            Some(*want),
            "{key}\n{context}"
        );
    }
}

/// Boots a guest with `setup` `boots` times from one disk; its findings, and the
/// journal lines to show when an assertion fails. `None` when it cannot run here.
fn run(setup: Setup, boots: u32) -> Option<(BTreeMap<String, String>, String)> {
    let root = guest_root();
    if let Some(reason) = missing(&root) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: {reason}"
        );
        eprintln!("skipping: {reason}");
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let files = stage(&units(setup), setup, work.path());
    let mut disks = vec![disk(&root, &files, work.path())];
    if setup == Setup::Card {
        disks.push(card(work.path()));
    }
    let console: Vec<String> = (1..=boots).map(|n| boot(&root, &disks, n)).collect();
    let console = console.join("\n");
    let journal: Vec<&str> = console
        .lines()
        .filter(|line| {
            [
                "moat-journal: ",
                "moat-passwd: ",
                "moat-provision: ",
                "moat-kernel: ",
                "moat-doctor: ",
                "moat-denials: ",
                "moat-doctor-bridge: ",
                "moat-bridge-log: ",
            ]
            .iter()
            .any(|tag| line.contains(tag))
        })
        .collect();
    let found = findings(&console);
    let context = format!("findings: {found:#?}\njournal:\n{}", journal.join("\n"));
    Some((found, context))
}

/// What holds on every boot of either setup, but the units' list.
const HEALTHY: [(&str, &str); 9] = [
    ("doctor-fail", "0"),
    ("firewall-then-broker", "1"),
    ("state", "moat:moat:700"),
    ("not-moat", ""),
    ("table", "loaded"),
    ("verify-ip", "Verification: OK"),
    ("verify-name", "Verification: OK"),
    ("stop", "1,0,0,success"),
    ("seccomp", "0"),
];

#[test]
fn the_appliance_image_runs_under_the_modules_units_across_a_reboot() {
    let Some((found, context)) = run(Setup::Card, 2) else {
        return;
    };
    // CONNACK 4 (MQTT 3.1.1, mosquitto_sub's default), as mosquitto_sub prints it.
    let refused = "Connection error: Connection Refused: bad user name or password.";
    for boot in [1, 2] {
        expect(&found, boot, &HEALTHY, &context);
        expect(
            &found,
            boot,
            &[
                ("firstboot-then-firewall", "1"),
                ("firstboot-then-wifi", "1"),
                ("credential", "hello"),
                ("device", "hello"),
                ("old-password", refused),
            ],
            &context,
        );
    }
    expect(
        &found,
        1,
        &[
            ("units", "active,active,active"),
            ("round-trip", "hello"),
            // wpa_supplicant.conf is gone from the card.
            ("card", "moat-ca.pem,moat-setup.txt,moat.yaml"),
            ("wifi-saw", "present"),
            ("wifi", "root:700,root:600"),
            ("wifi-lines", "0,1,0,0"),
            ("card-plaintext", "0"),
            ("manifest", "moat:moat:600"),
            ("new-password", "hello"),
            ("after-provision", ""),
            ("outside", "124"),
            ("outside-allowed", "0"),
            ("inside", "1"),
            ("table-reloaded", "loaded"),
        ],
        &context,
    );
    expect(
        &found,
        2,
        &[
            ("after-reboot", "hello"),
            ("certificate", "same"),
            // The near-miss name left by the first boot: the import's unit failed
            // and said why on the card; the firewall and the broker run.
            ("units", "failed,active,active"),
            ("firstboot-result", "exit-code"),
            ("card-note", "1"),
        ],
        &context,
    );
}

#[test]
fn a_declared_manifest_runs_under_the_modules_units_and_a_rebuild_reloads_it() {
    let Some((found, context)) = run(Setup::Declared, 1) else {
        return;
    };
    expect(&found, 1, &HEALTHY, &context);
    expect(
        &found,
        1,
        &[
            // No first-boot unit without the card.
            ("units", "inactive,active,active"),
            ("round-trip", "hello"),
            ("rebuild", "hello"),
            ("denial", "1"),
            ("bridge-fenced", "Timed out"),
            ("bridge-doctor", "1"),
            ("bridge-allowed", "21"),
        ],
        &context,
    );
}

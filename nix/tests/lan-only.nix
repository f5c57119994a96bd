# NixOS VM test: the appliance as it is flashed. Its manifest (with a plaintext
# password, as a user writes it) and a wpa_supplicant.conf sit on a FAT disk labelled
# FIRMWARE, like the image's firmware partition; `moat firstboot` imports the
# manifest into /var/lib/moat (0700 moat:moat), the firewall (running as `moat`)
# reads it there, the broker answers the LAN and nobody else, mDNS answers
# moat.local on the LAN, and a failed firewall leaves SSH open to the LAN only.
#
# Nodes are numbered alphabetically (appliance=1, lan=2, wan=3). vlan 1 is the home
# LAN (192.168.1.0/24, and a ULA fd00:1::/64 instead of the framework's 2001:db8:1::),
# vlan 2 is the "WAN" with public documentation addresses (198.51.100.0/24 and the
# framework's 2001:db8:2::/64). The image module is not imported (it is hardware);
# this node gets services.moat with the image's first-boot settings.
#
# The driver runs every command as `set -euo pipefail; CMD` (nixpkgs
# nixos/lib/test-driver/src/test_driver/machine/__init__.py, `execute`), so a
# command expected to time out is written `rc=0; timeout ... || rc=$?; test ...`.
{ pkgs, moatModule }:
let
  moat = pkgs.callPackage ../package.nix { };
  password = "lan-only-test-password"; # a throwaway for this VM only

  cardManifest = pkgs.writeText "moat.yaml" ''
    version: 1
    broker:
      hostnames: [moat.home.arpa, moat6.home.arpa]
      listen:
        tls: { address: "::", port: 8883 }
      networks: [loopback, private]
    firewall: { ssh: false, mdns: true }
    users:
      tester:
        password: "${password}"
        publish: ["test/#"]
        subscribe: ["test/#"]
  '';

  # What Raspberry Pi OS users drop on the card, ctrl_interface line included.
  cardWifi = pkgs.writeText "wpa_supplicant.conf" ''
    ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev
    country=DE
    network={
      ssid="moat-test"
      psk="not-a-real-passphrase"
    }
  '';

  # The card: a FAT file system labelled like sd-image.nix's firmware partition.
  card =
    pkgs.runCommand "moat-test-card.img"
      {
        nativeBuildInputs = [
          pkgs.dosfstools
          pkgs.mtools
        ];
      }
      ''
        truncate -s 32M $out
        mkfs.vfat -n FIRMWARE $out
        mcopy -i $out ${cardManifest} ::moat.yaml
        mcopy -i $out ${cardWifi} ::wpa_supplicant.conf
      '';

  sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNvbWUtdGVzdC1rZXktbm90LXVzZWQtZm9yLWxvZ2lu moat-vm-test";

  client =
    { pkgs, ... }:
    {
      environment.systemPackages = [ pkgs.mosquitto ];
      services.avahi = {
        enable = true;
        nssmdns4 = true;
      };
    };
in
pkgs.testers.runNixOSTest {
  name = "moat-lan-only";

  nodes = {
    appliance =
      { lib, ... }:
      {
        imports = [ moatModule ];
        services.moat = {
          enable = true;
          package = moat;
          firstboot.enable = true;
          wifi.enable = true;
          mdns = {
            enable = true;
            hostName = "moat";
            interfaces = [ "eth1" ];
          };
          ssh = {
            enable = true;
            authorizedKeys = [ sshKey ];
          };
        };
        # The card, writable for the VM's lifetime only (snapshot=on: writes go to a
        # temporary overlay, the store file is never touched).
        virtualisation.qemu.options = [ "-drive if=virtio,format=raw,snapshot=on,file=${card}" ];
        # qemu-vm.nix replaces fileSystems with virtualisation.fileSystems.
        virtualisation.fileSystems."/boot/firmware" = {
          device = "/dev/disk/by-label/FIRMWARE";
          fsType = "vfat";
          options = [
            "nofail"
            "noauto"
          ];
        };
        virtualisation.vlans = [
          1
          2
        ];
        networking.interfaces.eth1.ipv6.addresses = lib.mkForce [
          {
            address = "fd00:1::1";
            prefixLength = 64;
          }
        ];
        networking.interfaces.eth2.ipv4.addresses = lib.mkForce [
          {
            address = "198.51.100.1";
            prefixLength = 24;
          }
        ];
      };

    lan =
      { lib, ... }:
      {
        imports = [ client ];
        virtualisation.vlans = [ 1 ];
        networking.hosts = {
          "192.168.1.1" = [ "moat.home.arpa" ];
          "fd00:1::1" = [ "moat6.home.arpa" ];
        };
        networking.interfaces.eth1.ipv6.addresses = lib.mkForce [
          {
            address = "fd00:1::2";
            prefixLength = 64;
          }
        ];
      };

    wan =
      { lib, ... }:
      {
        imports = [ client ];
        virtualisation.vlans = [ 2 ];
        networking.interfaces.eth1.ipv4.addresses = lib.mkForce [
          {
            address = "198.51.100.3";
            prefixLength = 24;
          }
        ];
        # The same names, resolving to the appliance's WAN side (as a port forward would).
        networking.hosts = {
          "198.51.100.1" = [ "moat.home.arpa" ];
          "2001:db8:2::1" = [ "moat6.home.arpa" ];
        };
      };
  };

  testScript = ''
    import shlex

    auth = "-u tester -P ${password}"
    tls = "--cafile /tmp/moat-ca.pem -p 8883"

    def dropped(machine, address, port):
        """A dropped SYN makes bash's /dev/tcp hang: timeout's 124, not a refusal."""
        machine.succeed(
            "rc=0; timeout 5 bash -c "
            + shlex.quote(f"exec 3<>/dev/tcp/{address}/{port}")
            + " || rc=$?; test $rc -eq 124"
        )

    start_all()

    with subtest("first boot imports the card, then firewall, then broker"):
        appliance.wait_for_unit("moat-firstboot.service")
        appliance.wait_for_unit("moat-firewall.service")
        appliance.wait_for_unit("moat.service")
        appliance.wait_for_open_port(8883)
        # The manifest now lives in the state directory, owned by moat, mode 0600,
        # with the plaintext password hashed.
        appliance.succeed("test \"$(stat -c '%U:%G %a' /var/lib/moat)\" = 'moat:moat 700'")
        appliance.succeed("test \"$(stat -c '%U:%G %a' /var/lib/moat/moat.yaml)\" = 'moat:moat 600'")
        appliance.succeed("grep -q 'password_hash: \"\\$argon2id\\$' /var/lib/moat/moat.yaml")
        appliance.fail("grep -q '${password}' /var/lib/moat/moat.yaml")
        # The firewall unit ran as moat, not root, and loaded moat's table.
        appliance.succeed("test \"$(systemctl show -P User moat-firewall.service)\" = moat")
        print(appliance.succeed("nft list table inet moat"))
        # The order: firstboot was done (active) before the firewall began to
        # start, and the firewall was done before the broker began to start.
        def when(prop, unit):
            return int(appliance.succeed(f"systemctl show -P {prop} {unit}").strip())
        assert when("ActiveEnterTimestampMonotonic", "moat-firstboot.service") <= when(
            "InactiveExitTimestampMonotonic", "moat-firewall.service"
        )
        assert when("ActiveEnterTimestampMonotonic", "moat-firewall.service") <= when(
            "InactiveExitTimestampMonotonic", "moat.service"
        )

    with subtest("the card was scrubbed and holds the CA; Wi-Fi moved to /etc"):
        appliance.succeed("mount /boot/firmware || true")
        appliance.fail("grep -q '${password}' /boot/firmware/moat.yaml")
        appliance.succeed("test -s /boot/firmware/moat-ca.pem")
        appliance.fail("test -e /boot/firmware/wpa_supplicant.conf")
        appliance.succeed("grep -q 'ssid=\"moat-test\"' /etc/wpa_supplicant/imperative.conf")
        appliance.fail("grep -q ctrl_interface /etc/wpa_supplicant/imperative.conf")
        appliance.succeed("test \"$(stat -c %a /etc/wpa_supplicant)\" = 700")

    lan.wait_for_unit("network.target")
    wan.wait_for_unit("network.target")

    # Clients trust the CA the appliance wrote to the card, and only it.
    ca = appliance.succeed("cat /boot/firmware/moat-ca.pem")
    for client in (lan, wan):
        client.succeed(f"printf '%s' {shlex.quote(ca)} > /tmp/moat-ca.pem")

    with subtest("TLS publish/subscribe works from the LAN (IPv4)"):
        lan.succeed(
            "systemd-run --unit=moat-sub -- sh -c "
            + shlex.quote(f"mosquitto_sub -h moat.home.arpa {tls} {auth} -t test/live -C 1 -W 60 > /tmp/live")
        )
        lan.wait_until_succeeds(
            f"mosquitto_pub -h moat.home.arpa {tls} {auth} -t test/live -m ping && grep -qx ping /tmp/live",
            timeout=60,
        )

    with subtest("a ULA (fd00::/8) LAN client is accepted over IPv6"):
        lan.succeed(f"mosquitto_pub -h moat6.home.arpa {tls} {auth} -t test/v6 -m hi")

    with subtest("mDNS: moat.local answers on the LAN, the broker is advertised, the cert covers it"):
        lan.wait_until_succeeds("avahi-resolve-host-name -4 moat.local | grep -F 192.168.1.1", timeout=60)
        lan.wait_until_succeeds(
            "avahi-browse --terminate --resolve --parsable _secure-mqtt._tcp | grep -F ';8883;'",
            timeout=60,
        )
        # mosquitto checks the certificate's names against the host it was given.
        lan.succeed(f"mosquitto_pub -h moat.local {tls} {auth} -t test/mdns -m hi")

    with subtest("mDNS is not answered on the WAN side"):
        # avahi-resolve prints a found address on stdout, a failure on stderr.
        wan.fail("timeout 20 avahi-resolve-host-name -4 moat.local | grep -F moat.local")

    with subtest("anonymous access is refused"):
        lan.fail(f"mosquitto_pub -h moat.home.arpa {tls} -t test/anon -m hi")
        lan.fail(f"mosquitto_pub -h moat.home.arpa {tls} -u tester -P wrong -t test/anon -m hi")

    with subtest("the WAN gets no answer at all (dropped, not refused)"):
        dropped(wan, "198.51.100.1", 8883)
        dropped(wan, "2001:db8:2::1", 8883)
        wan.fail(f"timeout 15 mosquitto_pub -h moat.home.arpa {tls} {auth} -t test/wan -m hi")
        wan.succeed("ping -c 1 -W 2 198.51.100.1")  # the host is up; only the broker is fenced

    with subtest("a global (2001:db8::) IPv6 source is dropped even on the LAN segment"):
        appliance.succeed("ip -6 addr add 2001:db8:1::1/64 dev eth1")
        lan.succeed("ip -6 addr add 2001:db8:1::2/64 dev eth1")
        lan.wait_until_succeeds("ping -c 1 -W 2 2001:db8:1::1", timeout=30)
        dropped(lan, "2001:db8:1::1", 8883)

    with subtest("SSH is closed while the manifest says ssh: false"):
        appliance.wait_for_unit("sshd.service")
        dropped(lan, "192.168.1.1", 22)
        dropped(wan, "198.51.100.1", 22)

    with subtest("hardening"):
        print(appliance.succeed("systemd-analyze security moat.service moat-firewall.service"))

    # Last: this breaks the appliance on purpose.
    with subtest("a failed firewall keeps the broker down and SSH open to the LAN only"):
        appliance.succeed("printf 'version: [\\n' > /var/lib/moat/moat.yaml")
        appliance.succeed("nft delete table inet moat")
        appliance.fail("systemctl restart moat-firewall.service")
        # Requires= propagates the restart; the broker does not come back without its table.
        appliance.fail("systemctl is-active --quiet moat.service")
        appliance.succeed("systemctl restart sshd.service")
        appliance.wait_for_open_port(22)
        lan.succeed("timeout 5 bash -c 'exec 3<>/dev/tcp/192.168.1.1/22'")
        dropped(wan, "198.51.100.1", 22)
  '';
}

# NixOS VM test: the broker answers the LAN and nobody else.
#
# Nodes are numbered alphabetically (appliance=1, lan=2, wan=3). vlan 1 is the home
# LAN (192.168.1.0/24, and a ULA fd00:1::/64 instead of the framework's 2001:db8:1::),
# vlan 2 is the "WAN" with public documentation addresses (198.51.100.0/24 and the
# framework's 2001:db8:2::/64). The hardware module is not imported: it sets
# nixpkgs.overlays, which runNixOSTest's read-only pkgs refuses.
{ pkgs, moatModule }:
let
  moat = pkgs.callPackage ../package.nix { };
  password = "lan-only-test-password"; # a throwaway for this VM only

  # The manifest carries only a hash, made at build time by the same binary.
  manifestTemplate = pkgs.writeText "lan-only.yaml" ''
    version: 1
    broker:
      hostnames: [moat.home.arpa, moat6.home.arpa]
      listen:
        tls: { address: "::", port: 8883 }
      networks: [loopback, private]
    users:
      tester:
        password_hash: "@TESTER_HASH@"
        publish: ["test/#"]
        subscribe: ["test/#"]
  '';
  manifest = pkgs.runCommand "moat-lan-only.yaml" { nativeBuildInputs = [ moat ]; } ''
    hash=$(printf '%s' ${password} | moat passwd tester --stdin | grep -o '\$argon2id\$[^[:space:]"]*' | head -n 1)
    test -n "$hash"
    substitute ${manifestTemplate} $out --replace-fail @TESTER_HASH@ "$hash"
  '';

  client =
    { pkgs, ... }:
    {
      environment.systemPackages = [ pkgs.mosquitto ];
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
          inherit manifest;
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

    start_all()
    appliance.wait_for_unit("moat-firewall.service")
    appliance.wait_for_unit("moat.service")
    appliance.wait_for_open_port(8883)
    lan.wait_for_unit("network.target")
    wan.wait_for_unit("network.target")

    print(appliance.succeed("nft list table inet moat"))

    # The CA certificate the broker generated; clients trust only it.
    ca_path = appliance.succeed(
        "find /var/lib/moat -name '*.pem' -exec grep -l 'BEGIN CERTIFICATE' {} + "
        "| grep -i ca | head -n 1"
    ).strip()
    assert ca_path, "no CA certificate under /var/lib/moat"
    ca = appliance.succeed(f"cat {shlex.quote(ca_path)}")
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

    with subtest("anonymous access is refused"):
        lan.fail(f"mosquitto_pub -h moat.home.arpa {tls} -t test/anon -m hi")
        lan.fail(f"mosquitto_pub -h moat.home.arpa {tls} -u tester -P wrong -t test/anon -m hi")

    with subtest("the WAN gets no answer at all (dropped, not refused)"):
        # bash's /dev/tcp hangs on a dropped SYN; timeout's exit code 124 proves it.
        wan.succeed("timeout 5 bash -c 'exec 3<>/dev/tcp/198.51.100.1/8883'; test $? -eq 124")
        wan.succeed("timeout 5 bash -c 'exec 3<>/dev/tcp/2001:db8:2::1/8883'; test $? -eq 124")
        wan.fail(f"timeout 15 mosquitto_pub -h moat.home.arpa {tls} {auth} -t test/wan -m hi")
        wan.succeed("ping -c 1 -W 2 198.51.100.1")  # the host is up; only the broker is fenced

    with subtest("a global (2001:db8::) IPv6 source is dropped even on the LAN segment"):
        appliance.succeed("ip -6 addr add 2001:db8:1::1/64 dev eth1")
        lan.succeed("ip -6 addr add 2001:db8:1::2/64 dev eth1")
        lan.wait_until_succeeds("ping -c 1 -W 2 2001:db8:1::1", timeout=30)
        lan.succeed("timeout 5 bash -c 'exec 3<>/dev/tcp/2001:db8:1::1/8883'; test $? -eq 124")

    with subtest("no SSH unless enabled"):
        lan.succeed("timeout 5 bash -c 'exec 3<>/dev/tcp/192.168.1.1/22'; test $? -eq 124")

    with subtest("hardening"):
        print(appliance.succeed("systemd-analyze security moat.service"))
  '';
}

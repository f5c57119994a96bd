# services.moat: the LAN-only MQTT broker, its nftables ruleset and (on an appliance)
# the first-boot import from the SD card's FAT partition.
#
# Thin on purpose: Nix cannot read YAML, so the moat binary does the work (it reads
# the manifest, renders the firewall, hashes passwords, makes keys). This module only
# wires systemd units around `moat firewall --apply`, `moat firstboot` and `moat serve`.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.moat;
  moat = lib.getExe cfg.package;

  # A declared manifest is checked at build time (./check-manifest.nix) and linked
  # to a stable path, so a new manifest changes no unit file: the units are
  # reloaded (reloadTriggers), not restarted.
  checkedManifest = pkgs.callPackage ./check-manifest.nix { moat = cfg.checkPackage; } cfg.manifest;
  manifestPath = if cfg.manifest == null then "${cfg.stateDir}/moat.yaml" else "/etc/moat/moat.yaml";
  manifestTriggers = lib.optional (cfg.manifest != null) checkedManifest;

  # The units' service settings: plain data shared with tests/systemd_units.rs.
  units = import ./units.nix {
    inherit moat manifestPath;
    inherit (cfg)
      stateDir
      allowedAddresses
      memoryMax
      credentials
      ;
    inherit (cfg.firstboot) bootPartition;
    coreutilsBin = "${pkgs.coreutils}/bin";
    gnusedBin = "${pkgs.gnused}/bin";
    egress = cfg.firewall.egress;
    firstboot = firstbootActive;
    firstbootBefore = lib.optional cfg.wifi.enable wifiUnit;
  };
  moatEnvironment = units.environment;

  wifiUnit = "wpa_supplicant-${cfg.wifi.interface}.service";

  # The Raspberry Pi OS convention, a wpa_supplicant.conf dropped on the card: see
  # ./units.nix.
  importWifi = pkgs.writeShellScript "moat-import-wifi" units.importWifiScript;

  # `moat firstboot` imports the manifest only when none is declared; the Wi-Fi
  # import is wanted either way on a Wi-Fi appliance.
  # Wi-Fi first: a failing `moat firstboot` (it reports why in moat-error.txt on the
  # card) must not also leave the device offline.
  importManifest = pkgs.writeShellScript "moat-firstboot" units.importManifestScript;
  firstbootSteps =
    lib.optional cfg.wifi.enable importWifi ++ lib.optional (cfg.manifest == null) importManifest;
  firstbootActive = cfg.firstboot.enable && firstbootSteps != [ ];

  # What stays open when moat's own table is missing (the firewall unit failed, or
  # has not run yet): only SSH from the standard private ranges. It is a separate
  # table at a later priority, loaded by nixpkgs' nftables.service, so it also holds
  # while moat's table is loaded (a packet needs an accept from both; moat's table
  # is the stricter one).
  sshFallbackTable = ''
    chain input {
      type filter hook input priority filter + 10; policy accept;
      tcp dport 22 ip saddr != { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, 127.0.0.0/8 } drop
      tcp dport 22 ip6 saddr != { fc00::/7, fe80::/10, ::1 } drop
    }
  '';

  # DNS-SD record for the broker (avahi.service(5)); `_secure-mqtt` is IANA's name
  # for MQTT over TLS, port 8883.
  mqttService = ''
    <?xml version="1.0" standalone='no'?>
    <!DOCTYPE service-group SYSTEM "avahi-service.dtd">
    <service-group>
      <name replace-wildcards="yes">moat MQTT broker on %h</name>
      <service>
        <type>_secure-mqtt._tcp</type>
        <port>${toString cfg.mdns.port}</port>
      </service>
    </service-group>
  '';
in
{
  options.services.moat = {
    enable = lib.mkEnableOption "moat, the locked-down LAN-only MQTT broker";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The moat package (built for the host platform, cross-compiled if needed).";
    };

    checkPackage = lib.mkOption {
      type = lib.types.package;
      default = pkgs.buildPackages.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.buildPackages.callPackage ./package.nix { }";
      description = ''
        The moat that validates a declared `manifest` at build time (`moat check`).
        Built for the build platform, so the check also runs when the image is
        cross-compiled.
      '';
    };

    manifest = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = lib.literalExpression "./moat.yaml";
      description = ''
        The manifest (users, devices, rules). It goes into the Nix store, so it must
        hold no secrets: argon2id hashes or `password_file` paths only. It is
        validated with `moat check` at build time: a bad manifest fails the build.
        `null` means the manifest imported on first boot from the SD card,
        kept at `''${stateDir}/moat.yaml`.
      '';
    };

    stateDir = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/moat";
      readOnly = true;
      description = "Keys, certificates and the database (systemd `StateDirectory=moat`, mode 0700).";
    };

    credentials = lib.mkOption {
      type = lib.types.attrsOf lib.types.path;
      default = { };
      example = {
        zigbee2mqtt = "/run/secrets/zigbee2mqtt";
      };
      description = ''
        Secret files handed to the broker with systemd `LoadCredential=`; the manifest
        refers to them as `/run/credentials/moat.service/<name>`. Give each as an
        absolute path in a string (`"/run/secrets/x"`), never a path literal
        (`./x`): a path literal, or a file inside a flake's source, is in the
        world-readable Nix store, which an assertion refuses. A file missing when
        the broker starts stops it from starting (systemd logs "Failed to set up
        credentials").
      '';
    };

    allowedAddresses = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = import ./private-ranges.nix;
      description = ''
        `IPAddressAllow=` of the broker unit (everything else is `IPAddressDeny=any`),
        a kernel-level third fence behind the broker's own admission check and the
        nftables ruleset, which both follow the manifest's `networks`. Nix cannot read
        the manifest, so this defaults to the standard private ranges; narrow it when
        the manifest narrows them, widen it when the manifest adds networks. It also
        fences outbound connections: a bridge to a broker outside these ranges needs
        that broker's address (or prefix) here, since systemd takes no host names.
      '';
    };

    memoryMax = lib.mkOption {
      type = lib.types.str;
      default = "256M";
      description = "`MemoryMax=` of the broker unit (the Pi Zero 2 W has 512 MB).";
    };

    firewall.egress = lib.mkEnableOption "restricting outbound traffic to the LAN, DNS, NTP and DHCP (`moat firewall --egress`)";

    firstboot = {
      enable = lib.mkEnableOption "the first-boot import from the SD card's FAT partition (appliance images)";
      bootPartition = lib.mkOption {
        type = lib.types.str;
        default = "/boot/firmware";
        description = "Where the FAT partition holding `moat.yaml` and `wpa_supplicant.conf` is mounted.";
      };
    };

    mdns = {
      enable = lib.mkEnableOption ''
        avahi answering `<hostName>.local` and advertising the broker as
        `_secure-mqtt._tcp`. Packets reach it only if the manifest also says
        `firewall: { mdns: true }`'';
      hostName = lib.mkOption {
        type = lib.types.str;
        default = config.networking.hostName;
        defaultText = lib.literalExpression "config.networking.hostName";
        description = ''
          The name published as `<hostName>.local`. The broker's certificate covers
          `<first label>.local` of each `broker.hostnames` entry, so the first label
          of one of them must be this name (`moat.home.arpa` for `moat`).
        '';
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = 8883;
        description = "The TLS port advertised; the manifest's `broker.listen.tls` port.";
      };
      interfaces = lib.mkOption {
        type = lib.types.nullOr (lib.types.listOf lib.types.str);
        default = null;
        example = [ "wlan0" ];
        description = "The LAN interfaces avahi answers on (`null`: all but loopback and point-to-point).";
      };
    };

    ssh = {
      enable = lib.mkEnableOption ''
        OpenSSH for root, public keys only. The port is opened to the allowed networks
        only if the manifest also says `firewall: { ssh: true }`; if moat's firewall
        is not loaded, SSH stays reachable from the standard private ranges only'';
      authorizedKeys = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "Public keys allowed to log in as root (needed by `nixos-rebuild --target-host`).";
      };
    };

    wifi = {
      enable = lib.mkEnableOption "Wi-Fi with wpa_supplicant, configured from /etc/wpa_supplicant/imperative.conf";
      interface = lib.mkOption {
        type = lib.types.str;
        default = "wlan0";
        description = "The wireless interface.";
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = !config.networking.firewall.enable;
            message = "services.moat renders its own nftables ruleset; set networking.firewall.enable = false.";
          }
          {
            assertion = !config.networking.nftables.flushRuleset;
            message = "networking.nftables.flushRuleset would delete moat's table on every nftables reload.";
          }
          {
            # `toString`, not interpolation: interpolating a path literal would copy
            # the secret into the store just to check it.
            assertion = lib.all (path: !lib.hasPrefix builtins.storeDir (toString path)) (
              lib.attrValues cfg.credentials
            );
            message = "services.moat.credentials: a secret in the Nix store is readable by every user; give an absolute path outside it as a string.";
          }
          {
            assertion = cfg.ssh.enable -> cfg.ssh.authorizedKeys != [ ];
            message = "services.moat.ssh.enable needs at least one key in services.moat.ssh.authorizedKeys.";
          }
        ];

        # One source of truth for the packet filter: `moat firewall`.
        networking.firewall.enable = false;
        networking.nftables.enable = true;

        environment.etc = lib.mkIf (cfg.manifest != null) { "moat/moat.yaml".source = checkedManifest; };
        environment.systemPackages = [ cfg.package ];
        environment.variables = moatEnvironment;

        users.users.moat = {
          isSystemUser = true;
          group = "moat";
          home = cfg.stateDir;
        };
        users.groups.moat = { };

        # The nftables ruleset, rendered from the manifest by the binary at boot (the
        # image's manifest only exists after first boot, so it cannot be rendered at
        # build time). `--apply` replaces `table inet moat` atomically; on a bad
        # manifest the old table stays, and at boot the broker does not start without
        # it (SSH does: see sshFallbackTable). Who it runs as, when, and why:
        # ./units.nix.
        systemd.services.moat-firewall = units.order.firewall // {
          description = "moat nftables ruleset (LAN-only broker)";
          wantedBy = [ "multi-user.target" ];
          environment = moatEnvironment;
          path = [ pkgs.nftables ];
          # A new manifest or package reloads (re-applies) the ruleset instead of
          # restarting the unit, so a failed re-apply never stops the broker.
          reloadIfChanged = true;
          reloadTriggers = manifestTriggers;
          serviceConfig = units.firewall;
        };

        systemd.services.moat = units.order.broker // {
          description = "moat MQTT broker (LAN only)";
          wantedBy = [ "multi-user.target" ];
          environment = moatEnvironment // units.brokerEnvironment;
          reloadTriggers = manifestTriggers;
          serviceConfig = units.broker;
        };
      }

      (lib.mkIf firstbootActive {
        # So that the root-run import below writes into a directory the broker
        # already owns.
        systemd.tmpfiles.rules = [ units.stateDirRule ];

        # Runs on every boot; `moat firstboot` is idempotent (a no-op once imported).
        # A unit of its own, not an ExecStartPre of moat.service: it must run as root
        # (it writes to the FAT card) and before the firewall and Wi-Fi, which both
        # come before the broker.
        systemd.services.moat-firstboot = units.order.firstboot // {
          description = "moat first boot: import the manifest and Wi-Fi settings from the SD card";
          wantedBy = [ "multi-user.target" ];
          environment = moatEnvironment;
          serviceConfig = units.firstboot // {
            ExecStart = firstbootSteps;
          };
        };
      })

      (lib.mkIf cfg.ssh.enable {
        services.openssh = {
          enable = true;
          openFirewall = false;
          settings = {
            PasswordAuthentication = false;
            KbdInteractiveAuthentication = false;
            PermitRootLogin = "prohibit-password";
          };
        };
        users.users.root.openssh.authorizedKeys.keys = cfg.ssh.authorizedKeys;
        # Not Requires= on the firewall: a bad manifest must not lock you out. sshd
        # starts after it (so its rules are usually in place first) whatever its
        # result; without moat's table, this one keeps port 22 to the LAN.
        systemd.services.sshd.after = [ "moat-firewall.service" ];
        networking.nftables.tables.moat-ssh-fallback = {
          family = "inet";
          content = sshFallbackTable;
        };
      })

      (lib.mkIf cfg.wifi.enable {
        # No declared networks: wpa_supplicant reads
        # /etc/wpa_supplicant/imperative.conf, which the first-boot import (or you,
        # over SSH) puts there; the PSK never enters the Nix store.
        networking.wireless = {
          enable = true;
          interfaces = [ cfg.wifi.interface ];
        };
      })

      (lib.mkIf cfg.mdns.enable {
        # The NixOS firewall is off (assertion above), so openFirewall would do
        # nothing; moat's table opens 5353 when the manifest says `mdns: true`.
        services.avahi = {
          enable = true;
          inherit (cfg.mdns) hostName;
          allowInterfaces = cfg.mdns.interfaces;
          openFirewall = false;
          wideArea = false;
          publish = {
            enable = true;
            addresses = true;
          };
          extraServiceFiles.moat-mqtt = mqttService;
        };
      })
    ]
  );
}

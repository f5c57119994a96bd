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

  # A declared manifest is linked to a stable path, so a new manifest changes no unit
  # file: the units are reloaded (reloadTriggers), not restarted.
  manifestPath = if cfg.manifest == null then "${cfg.stateDir}/moat.yaml" else "/etc/moat/moat.yaml";
  manifestTriggers = lib.optional (cfg.manifest != null) cfg.manifest;

  moatEnvironment = {
    MOAT_MANIFEST = manifestPath;
    MOAT_STATE = cfg.stateDir;
  };

  firewallCommand = "${moat} firewall --apply" + lib.optionalString cfg.firewall.egress " --egress";

  wifiUnit = "wpa_supplicant-${cfg.wifi.interface}.service";

  # The Raspberry Pi OS convention: a wpa_supplicant.conf dropped on the FAT partition
  # is moved to /etc (mode 0600) and removed from the card, so the PSK does not stay
  # on a partition anyone can read.
  importWifi = pkgs.writeShellScript "moat-import-wifi" ''
    set -eu
    card=${lib.escapeShellArg cfg.firstboot.bootPartition}/wpa_supplicant.conf
    [ -f "$card" ] || exit 0
    ${pkgs.coreutils}/bin/install -m 0600 -o root -g root "$card" /etc/wpa_supplicant.conf
    ${pkgs.coreutils}/bin/rm -f "$card"
    ${pkgs.coreutils}/bin/sync
  '';

  # `moat firstboot` imports the manifest only when none is declared; the Wi-Fi
  # import is wanted either way on a Wi-Fi appliance.
  # Wi-Fi first: a failing `moat firstboot` (it reports why in moat-error.txt on the
  # card) must not also leave the device offline.
  firstbootSteps =
    lib.optional cfg.wifi.enable importWifi
    ++ lib.optional (cfg.manifest == null) "${moat} firstboot --boot ${cfg.firstboot.bootPartition}";
  firstbootActive = cfg.firstboot.enable && firstbootSteps != [ ];
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

    manifest = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = lib.literalExpression "./moat.yaml";
      description = ''
        The manifest (users, devices, rules). It goes into the Nix store, so it must
        hold no secrets: argon2id hashes or `password_file` paths only.
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
        refers to them as `/run/credentials/moat.service/<name>`. The files stay
        outside the Nix store and readable by root only.
      '';
    };

    allowedAddresses = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [
        "localhost"
        "link-local"
        "10.0.0.0/8"
        "172.16.0.0/12"
        "192.168.0.0/16"
        "fc00::/7"
      ];
      description = ''
        `IPAddressAllow=` of the broker unit (everything else is `IPAddressDeny=any`),
        a kernel-level third fence behind the broker's own admission check and the
        nftables ruleset, which both follow the manifest's `networks`. Nix cannot read
        the manifest, so this defaults to the standard private ranges; narrow it when
        the manifest narrows them, widen it when the manifest adds networks.
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

    ssh = {
      enable = lib.mkEnableOption ''
        OpenSSH for root, public keys only. The port is opened to the allowed networks
        only if the manifest also says `firewall: { ssh: true }`'';
      authorizedKeys = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "Public keys allowed to log in as root (needed by `nixos-rebuild --target-host`).";
      };
    };

    wifi = {
      enable = lib.mkEnableOption "Wi-Fi with wpa_supplicant, configured from /etc/wpa_supplicant.conf";
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
            assertion = cfg.ssh.enable -> cfg.ssh.authorizedKeys != [ ];
            message = "services.moat.ssh.enable needs at least one key in services.moat.ssh.authorizedKeys.";
          }
        ];

        # One source of truth for the packet filter: `moat firewall`.
        networking.firewall.enable = false;
        networking.nftables.enable = true;

        environment.etc = lib.mkIf (cfg.manifest != null) { "moat/moat.yaml".source = cfg.manifest; };
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
        # build time). Ordered before network-pre.target like nixpkgs' nftables unit:
        # it is in force before any interface is configured. `--apply` replaces
        # `table inet moat` atomically; on a bad manifest the old table stays, and at
        # boot the broker (and sshd) do not start without it.
        systemd.services.moat-firewall = {
          description = "moat nftables ruleset (LAN-only broker)";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-pre.target" ];
          before = [
            "network-pre.target"
            "shutdown.target"
          ];
          after = [
            "sysinit.target"
            "nftables.service"
          ]
          ++ lib.optional firstbootActive "moat-firstboot.service";
          conflicts = [ "shutdown.target" ];
          unitConfig.DefaultDependencies = false;
          environment = moatEnvironment;
          path = [ pkgs.nftables ];
          # A new manifest or package reloads (re-applies) the ruleset instead of
          # restarting the unit, so a failed re-apply never stops the broker or sshd.
          reloadIfChanged = true;
          reloadTriggers = manifestTriggers;
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = firewallCommand;
            ExecReload = firewallCommand;
            CapabilityBoundingSet = [ "CAP_NET_ADMIN" ];
            NoNewPrivileges = true;
            ProtectSystem = "strict";
            ProtectHome = true;
            RestrictAddressFamilies = [
              "AF_NETLINK"
              "AF_UNIX"
            ];
            UMask = "0077";
          };
        };

        systemd.services.moat = {
          description = "moat MQTT broker (LAN only)";
          wantedBy = [ "multi-user.target" ];
          requires = [ "moat-firewall.service" ];
          after = [
            "network.target"
            "moat-firewall.service"
          ]
          ++ lib.optional firstbootActive "moat-firstboot.service";
          # The malloc setting `moat serve` would otherwise re-execute itself to get
          # (argon2's 19 MiB per login goes back to the OS); see the README.
          environment = moatEnvironment // {
            GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=131072";
          };
          reloadTriggers = manifestTriggers;
          serviceConfig = {
            Type = "notify";
            NotifyAccess = "main";
            ExecStart = "${moat} serve";
            ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
            Restart = "on-failure";
            RestartSec = 2;

            User = "moat";
            Group = "moat";
            StateDirectory = "moat";
            StateDirectoryMode = "0700";
            WorkingDirectory = cfg.stateDir;
            LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;

            # Ports 1883/8883 are above 1024: no capability at all.
            CapabilityBoundingSet = "";
            AmbientCapabilities = "";
            NoNewPrivileges = true;
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
            PrivateUsers = true;
            DevicePolicy = "closed";
            ProtectClock = true;
            ProtectHostname = true;
            ProtectKernelLogs = true;
            ProtectKernelModules = true;
            ProtectKernelTunables = true;
            ProtectControlGroups = true;
            ProtectProc = "invisible";
            ProcSubset = "pid";
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            RemoveIPC = true;
            UMask = "0077";
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_UNIX"
            ];
            SystemCallArchitectures = "native";
            SystemCallFilter = [
              "@system-service"
              "~@privileged"
              "~@resources"
            ];
            IPAddressDeny = "any";
            IPAddressAllow = cfg.allowedAddresses;
            MemoryMax = cfg.memoryMax;
            TasksMax = 64;
            LimitNOFILE = 4096;
          };
        };
      }

      (lib.mkIf firstbootActive {
        # Created here, owned by moat, so that the root-run import below writes into a
        # directory the broker already owns.
        systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 0700 moat moat - -" ];

        # Runs on every boot; `moat firstboot` is idempotent (a no-op once imported).
        # A unit of its own, not an ExecStartPre of moat.service: it must run as root
        # (it writes to the FAT card) and before the firewall and Wi-Fi, which both
        # come before the broker.
        systemd.services.moat-firstboot = {
          description = "moat first boot: import the manifest and Wi-Fi settings from the SD card";
          wantedBy = [ "multi-user.target" ];
          before = [
            "moat-firewall.service"
            "moat.service"
          ]
          ++ lib.optional cfg.wifi.enable wifiUnit;
          after = [ "systemd-tmpfiles-setup.service" ];
          unitConfig.RequiresMountsFor = [
            cfg.firstboot.bootPartition
            cfg.stateDir
          ];
          environment = moatEnvironment;
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            UMask = "0077";
            ExecStart = firstbootSteps;
            ExecStartPost = "${pkgs.coreutils}/bin/chown -R moat:moat ${cfg.stateDir}";
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
        # No sshd without moat's table: fail closed.
        systemd.services.sshd = {
          requires = [ "moat-firewall.service" ];
          after = [ "moat-firewall.service" ];
        };
      })

      (lib.mkIf cfg.wifi.enable {
        # No declared networks: wpa_supplicant reads /etc/wpa_supplicant.conf, which
        # the first-boot import (or you, over SSH) puts there; the PSK never enters
        # the Nix store.
        networking.wireless = {
          enable = true;
          interfaces = [ cfg.wifi.interface ];
        };
      })
    ]
  );
}

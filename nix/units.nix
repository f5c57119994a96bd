# The service settings of moat's systemd units and their ordering, as plain data: no
# nixpkgs, no module system. module.nix passes store paths and its options in;
# tests/systemd_units.rs evaluates this same file with `nix-instantiate --eval
# --json`, renders it the way NixOS renders `serviceConfig` and the ordering options
# (nixpkgs nixos/lib/systemd-lib.nix: attrsToSection, one `Key=value` line per list
# element, booleans as true/false; unitConfig, each ordering list space-joined on
# one line) and boots it under systemd in a VM with the real binary. One place, so
# the test runs the sandbox and the boot order the appliance runs.
{
  # The `moat` executable, and the directories holding coreutils (`kill`, `chown`,
  # `mkdir`...) and GNU sed.
  moat,
  coreutilsBin,
  gnusedBin,
  stateDir,
  manifestPath,
  allowedAddresses,
  memoryMax,
  egress ? false,
  # name -> absolute path of a secret outside the store (systemd `LoadCredential=`).
  credentials ? { },
  bootPartition,
  # Whether the first-boot import runs (the prebuilt image: no declared manifest),
  # and the units besides moat's own that must wait for it (Wi-Fi's, which reads
  # the settings it imports).
  firstboot ? false,
  firstbootBefore ? [ ],
}:
let
  # lib.escapeShellArg, without lib.
  escapeShellArg = arg: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] arg + "'";
  firewallCommand = "${moat} firewall --apply" + (if egress then " --egress" else "");
  afterFirstboot = if firstboot then [ "moat-firstboot.service" ] else [ ];
in
{
  # How the units are ordered and pulled in: module.nix's
  # `systemd.services.<name>.{wants,requires,before,after,conflicts,unitConfig}`.
  order = {
    # Before network-pre.target like nixpkgs' nftables unit: the ruleset is in
    # force before any interface is configured.
    firewall = {
      wants = [ "network-pre.target" ];
      before = [
        "network-pre.target"
        "shutdown.target"
      ];
      after = [
        "sysinit.target"
        "nftables.service"
      ]
      ++ afterFirstboot;
      conflicts = [ "shutdown.target" ];
      unitConfig = {
        DefaultDependencies = false;
        RequiresMountsFor = [ stateDir ];
      };
    };
    # No broker without its firewall.
    broker = {
      requires = [ "moat-firewall.service" ];
      after = [
        "network.target"
        "moat-firewall.service"
      ]
      ++ afterFirstboot;
    };
    # After tmpfiles (the state directory it writes into is the broker's), before
    # everything that reads what it imports.
    firstboot = {
      before = [
        "moat-firewall.service"
        "moat.service"
      ]
      ++ firstbootBefore;
      after = [ "systemd-tmpfiles-setup.service" ];
      unitConfig.RequiresMountsFor = [
        bootPartition
        stateDir
      ];
    };
  };

  environment = {
    MOAT_MANIFEST = manifestPath;
    MOAT_STATE = stateDir;
  };

  # `moat firewall --apply`. It runs as `moat`, not root: the imported manifest is in
  # the state directory (0700 moat:moat), which root without CAP_DAC_OVERRIDE could
  # not enter. The one capability it needs, CAP_NET_ADMIN, is ambient, so the `nft`
  # it executes inherits it (capabilities(7): ambient capabilities survive execve of
  # a non-set-user-ID program).
  firewall = {
    Type = "oneshot";
    RemainAfterExit = true;
    ExecStart = firewallCommand;
    ExecReload = firewallCommand;
    User = "moat";
    Group = "moat";
    AmbientCapabilities = [ "CAP_NET_ADMIN" ];
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

  # `moat serve`.
  broker = {
    Type = "notify";
    NotifyAccess = "main";
    ExecStart = "${moat} serve";
    ExecReload = "${coreutilsBin}/kill -HUP $MAINPID";
    Restart = "on-failure";
    RestartSec = 2;

    User = "moat";
    Group = "moat";
    StateDirectory = "moat";
    StateDirectoryMode = "0700";
    WorkingDirectory = stateDir;
    # `toString`: interpolating a path value would copy the file into the store.
    LoadCredential = map (name: "${name}:${toString credentials.${name}}") (
      builtins.attrNames credentials
    );

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
    IPAddressAllow = allowedAddresses;
    MemoryMax = memoryMax;
    TasksMax = 64;
    LimitNOFILE = 4096;
  };

  # The malloc setting `moat serve` would otherwise re-execute itself to get
  # (argon2's 19 MiB per login goes back to the OS); see the README.
  brokerEnvironment = {
    GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=131072";
  };

  # The state directory, made before first boot's import writes into it: owned by
  # moat and 0700 (`moat firstboot` refuses a state directory others can read).
  stateDirRule = "d ${stateDir} 0700 moat moat - -";

  # The first-boot import (root). The files it writes as root are handed to `moat`
  # whatever its result: a run that fails half-way must not leave the broker a
  # root-owned key it cannot read.
  firstboot = {
    Type = "oneshot";
    RemainAfterExit = true;
    UMask = "0077";
  };
  # The Raspberry Pi OS convention: a wpa_supplicant.conf dropped on the card is
  # moved to the file NixOS' wpa_supplicant reads when no network is declared,
  # /etc/wpa_supplicant/imperative.conf (nixpkgs
  # nixos/modules/services/networking/wpa_supplicant.nix: `-c
  # /etc/wpa_supplicant/imperative.conf` when there is nothing declarative), and
  # removed from the card, so the PSK does not stay on a partition anyone can read.
  # The unit runs wpa_supplicant chrooted with its own control socket, so a
  # `ctrl_interface=` line (Raspberry Pi OS writes one, with a group NixOS lacks) is
  # dropped. The directory is made 0700: the unit's ExecStartPre chowns it to
  # wpa_supplicant and makes the file 0664, and the PSK must not be world-readable.
  # A file saved on Windows may start with a UTF-8 byte order mark, which
  # wpa_supplicant would read as part of the first line's key (an unknown field:
  # no Wi-Fi), and ends its lines in CRLF: both are taken out. Runs before the
  # manifest's import (module.nix), so a failing import does not also leave the
  # device offline.
  importWifiScript = ''
    set -eu
    card=${escapeShellArg bootPartition}/wpa_supplicant.conf
    [ -f "$card" ] || exit 0
    dir=/etc/wpa_supplicant
    ${coreutilsBin}/mkdir -p "$dir"
    ${coreutilsBin}/chmod 0700 "$dir"
    ${gnusedBin}/sed -E -e '1s/^\xEF\xBB\xBF//' -e 's/\r$//' \
      -e '/^[[:space:]]*ctrl_interface(_group)?[[:space:]]*=/d' "$card" > "$dir/imperative.conf.new"
    ${coreutilsBin}/chmod 0600 "$dir/imperative.conf.new"
    ${coreutilsBin}/mv "$dir/imperative.conf.new" "$dir/imperative.conf"
    ${coreutilsBin}/rm -f "$card"
    ${coreutilsBin}/sync
  '';
  importManifestScript = ''
    rc=0
    ${moat} firstboot --boot ${escapeShellArg bootPartition} || rc=$?
    ${coreutilsBin}/chown -R moat:moat ${escapeShellArg stateDir}
    exit "$rc"
  '';
}

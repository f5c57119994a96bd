{
  description = "moat: a locked-down, LAN-only MQTT broker appliance (and its Raspberry Pi Zero 2 W image)";

  # One input, pinned to an exact revision of the nixos-26.05 branch (NixOS
  # 26.05.10620.f5c082a40f75, 2026-09-25; see docs/nix.md). A branch URL would move
  # with every channel update until a flake.lock is committed. To update: set the
  # URL to github:NixOS/nixpkgs/nixos-26.05 (or nixos-26.11), `nix flake lock`, and
  # put the locked rev back here.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/f5c082a40f7571c266e74e80ae2e68aadd8a9fc7";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # A Pi Zero 2 W system: this flake's image module plus the caller's modules
      # (their manifest, SSH keys...). buildPlatform null = build natively on aarch64.
      mkPiZero2w =
        {
          modules ? [ ],
          buildPlatform ? null,
        }:
        lib.nixosSystem {
          modules = [
            self.nixosModules.pi-zero-2w
          ]
          ++ lib.optional (buildPlatform != null) { nixpkgs.buildPlatform = buildPlatform; }
          ++ modules;
        };
    in
    {
      lib = { inherit mkPiZero2w; };

      overlays.default = final: _prev: { moat = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (
        pkgs:
        let
          moat = pkgs.callPackage ./nix/package.nix { };
          native = pkgs.stdenv.hostPlatform.system == "aarch64-linux";
          pi =
            if native then self.nixosConfigurations.pi-zero-2w else self.nixosConfigurations.pi-zero-2w-cross;
        in
        {
          default = moat;
          inherit moat;
          pi-zero-2w-image = pi.config.system.build.sdImage;
        }
      );

      nixosModules = {
        default = ./nix/module.nix;
        pi-zero-2w = ./images/pi-zero-2w;
      };

      nixosConfigurations = {
        pi-zero-2w = mkPiZero2w { };
        pi-zero-2w-cross = mkPiZero2w { buildPlatform = "x86_64-linux"; };
      };

      checks.x86_64-linux =
        let
          pkgs = nixpkgs.legacyPackages.x86_64-linux;
        in
        {
          package = self.packages.x86_64-linux.default;
          # The appliance path: a manifest on a FAT card, imported at boot.
          lan-only = import ./nix/tests/lan-only.nix {
            inherit pkgs;
            moatModule = self.nixosModules.default;
          };
          # The declared path: a bad manifest fails the build, a good one passes.
          manifest-check = import ./nix/tests/manifest-check.nix { inherit pkgs; };
        };

      templates.default = {
        path = ./templates/default;
        description = "Your moat appliance: a manifest and one command to build its SD-card image";
      };
    };
}

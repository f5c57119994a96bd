{
  description = "moat: a locked-down, LAN-only MQTT broker appliance (and its Raspberry Pi Zero 2 W image)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    nixos-hardware.url = "github:NixOS/nixos-hardware";
  };

  outputs =
    {
      self,
      nixpkgs,
      nixos-hardware,
    }:
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
        pi-zero-2w = import ./images/pi-zero-2w { inherit nixos-hardware; };
      };

      nixosConfigurations = {
        pi-zero-2w = mkPiZero2w { };
        pi-zero-2w-cross = mkPiZero2w { buildPlatform = "x86_64-linux"; };
      };

      checks.x86_64-linux = {
        package = self.packages.x86_64-linux.default;
        lan-only = import ./nix/tests/lan-only.nix {
          pkgs = nixpkgs.legacyPackages.x86_64-linux;
          moatModule = self.nixosModules.default;
        };
      };

      templates.default = {
        path = ./templates/default;
        description = "Your moat appliance: a manifest and one command to build its SD-card image";
      };
    };
}

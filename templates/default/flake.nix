# Your moat appliance. Edit moat.yaml (and the SSH key below, or remove the ssh block),
# then build the SD-card image on an x86_64 Linux machine with Nix >= 2.18:
#
#   nix build .#pi-zero-2w-image
#   zstd -d result/sd-image/moat-pi-zero-2w.img.zst -o moat.img
#
# The build runs `moat check` on moat.yaml first: a manifest it rejects (the
# placeholder hash below, a typo) fails the build with its line and column.
#
# and later push changes to the running Pi (keys and data in /var/lib/moat stay):
#
#   nixos-rebuild switch --flake .#pi-zero-2w --target-host root@moat.home.arpa
{
  description = "My moat MQTT appliance";

  # Point this at the moat repository you use (a Git URL, or a local checkout path).
  inputs.moat.url = "github:OWNER/moat";

  outputs =
    { self, moat }:
    {
      nixosConfigurations.pi-zero-2w = moat.lib.mkPiZero2w {
        # Built on x86_64; drop this line when building on an aarch64 machine.
        buildPlatform = "x86_64-linux";
        modules = [
          {
            services.moat.manifest = ./moat.yaml;
            services.moat.ssh = {
              enable = true;
              authorizedKeys = [ "ssh-ed25519 AAAA... you@laptop" ];
            };
          }
        ];
      };

      packages.x86_64-linux.pi-zero-2w-image =
        self.nixosConfigurations.pi-zero-2w.config.system.build.sdImage;
    };
}

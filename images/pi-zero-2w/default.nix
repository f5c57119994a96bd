# The Raspberry Pi Zero 2 W appliance: hardware, SD-card image and the moat service.
# Called from flake.nix with the nixos-hardware input; the result is a NixOS module.
#
# The Zero 2 W (BCM2710A1, 512 MB, Wi-Fi CYW43436) is a Pi 3 family board, so it uses
# nixos-hardware's raspberry-pi-3 profile (vendor kernel, extlinux, and an overlay
# that lets the initrd skip modules the Pi kernel does not build). This module sets
# `nixpkgs.overlays` through that profile: keep it out of NixOS VM tests.
{ nixos-hardware }:
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:
let
  # Only what the Zero 2 W needs. U-Boot loads extlinux.conf from the root partition;
  # gpu_mem=16 leaves the GPU the minimum (the firmware then picks the cut-down
  # start/fixup files, which are copied below).
  configTxt = pkgs.writeText "config.txt" ''
    [pi02]
    kernel=u-boot-rpi3.bin

    [all]
    arm_64bit=1
    # U-Boot needs the UART enabled, whether or not a console is attached.
    enable_uart=1
    avoid_warnings=1
    gpu_mem=16
    dtparam=audio=off
    camera_auto_detect=0
    display_auto_detect=0
  '';
in
{
  imports = [
    nixos-hardware.nixosModules.raspberry-pi-3
    # sd-image.nix, not sd-image-aarch64.nix: the latter also imports profiles/base.nix
    # (rescue tools, ZFS and other file systems) and firmware for every Pi model.
    "${modulesPath}/installer/sd-card/sd-image.nix"
    "${modulesPath}/profiles/minimal.nix"
    ../../nix/module.nix
  ];

  nixpkgs.hostPlatform = lib.mkDefault "aarch64-linux";
  system.stateVersion = "25.11";
  networking.hostName = lib.mkDefault "moat";

  # sd-image.nix sets enableAllHardware, which pulls in all of linux-firmware and
  # initrd modules (ahci, sun4i-drm, pcie-brcmstb...) the Pi kernel lacks.
  hardware.enableAllHardware = lib.mkForce false;
  hardware.enableRedistributableFirmware = lib.mkForce false;
  # Only the Broadcom Wi-Fi firmware (CYW43436 / brcmfmac43436*), plus the regulatory
  # database that networking.wireless adds. Not mkDefault: any plain definition (that
  # wireless-regdb one) would silently drop it. Newer nixos-hardware adds its own copy;
  # the list merges and the first file of a name wins.
  hardware.firmware = [ pkgs.raspberrypiWirelessFirmware ];

  # The Zero 2 W device tree: the vendor kernel installs bcm2710-rpi-zero-2-w.dtb and
  # a copy under the upstream name U-Boot looks for; name it explicitly in
  # extlinux.conf and keep only the Zero 2 trees in /boot.
  hardware.deviceTree = {
    enable = true;
    filter = "*rpi-zero-2-w.dtb";
    name = "broadcom/bcm2837-rpi-zero-2-w.dtb";
  };

  boot.loader.generic-extlinux-compatible.configurationLimit = 5;

  image.baseName = "moat-pi-zero-2w";
  sdImage = {
    populateFirmwareCommands = ''
      (cd ${pkgs.raspberrypifw}/share/raspberrypi/boot && cp bootcode.bin fixup*.dat start*.elf bcm2710-rpi-zero-2-w.dtb $NIX_BUILD_TOP/firmware/)
      cp ${pkgs.ubootRaspberryPi3_64bit}/u-boot.bin firmware/u-boot-rpi3.bin
      cp ${configTxt} firmware/config.txt
      # What the user edits and renames to moat.yaml before first boot.
      cp ${../../templates/default/moat.yaml} firmware/moat.yaml.example
    '';
    populateRootCommands = ''
      mkdir -p ./files/boot
      ${config.boot.loader.generic-extlinux-compatible.populateCmd} -c ${config.system.build.toplevel} -d ./files/boot
    '';
  };

  # SD-card wear: no access-time writes, logs in RAM and capped, swap in zram only.
  fileSystems."/".options = [ "noatime" ];
  services.journald.extraConfig = ''
    Storage=volatile
    RuntimeMaxUse=16M
    RuntimeMaxFileSize=4M
  '';
  zramSwap = {
    enable = true;
    algorithm = "zstd";
    memoryPercent = 50;
  };

  documentation.enable = false;
  # Keep Nix (nixos-rebuild --target-host copies closures into it), without channels.
  nix.channel.enable = false;

  services.moat = {
    enable = true;
    firstboot.enable = true;
    wifi.enable = true;
  };
}

# The Raspberry Pi Zero 2 W appliance: hardware, SD-card image and the moat service.
#
# Everything comes from nixpkgs itself, the way nixpkgs' own
# installer/sd-card/sd-image-aarch64.nix boots the Pi 3 family (the Zero 2 W is one:
# BCM2710A1, 512 MB, Wi-Fi CYW43436): the mainline kernel (substituted from the
# binary cache for aarch64), the Raspberry Pi firmware, U-Boot for the Pi 3 and
# extlinux. No nixos-hardware: its raspberry-pi profile replaces the firmware
# partition (mkForce) and builds a vendor kernel no cache serves. Each option is
# cited to its nixpkgs source in docs/nix.md.
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:
let
  # Only what the Zero 2 W needs. The firmware starts U-Boot, which loads
  # extlinux.conf from the root partition; gpu_mem=16 leaves the GPU the minimum
  # (the firmware then picks the cut-down start/fixup files, which are copied
  # below). [pi02] and the [all] lines are those of sd-image-aarch64.nix.
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
    # sd-image.nix, not sd-image-aarch64.nix: the latter also imports profiles/base.nix
    # (rescue tools, ZFS and other file systems) and firmware for every Pi model.
    "${modulesPath}/installer/sd-card/sd-image.nix"
    "${modulesPath}/profiles/minimal.nix"
    ../../nix/module.nix
  ];

  nixpkgs.hostPlatform = lib.mkDefault "aarch64-linux";
  system.stateVersion = "26.05";
  networking.hostName = lib.mkDefault "moat";

  # The boot chain of sd-image-aarch64.nix: firmware -> U-Boot -> extlinux.conf.
  boot.loader.grub.enable = false;
  boot.loader.generic-extlinux-compatible = {
    enable = true;
    configurationLimit = 5;
  };
  # The mainline Zero 2 W device tree routes `serial1` (the mini UART, ttyS1 under
  # the mainline driver) to the header pins; tty0 for a screen.
  boot.kernelParams = [
    "console=ttyS1,115200n8"
    "console=tty0"
  ];

  # sd-image.nix sets enableAllHardware, which pulls in all of linux-firmware and
  # initrd modules for other boards. The Zero 2 W needs only its Wi-Fi firmware.
  hardware.enableAllHardware = lib.mkForce false;
  hardware.enableRedistributableFirmware = lib.mkForce false;
  # CYW43436 (brcmfmac43436* / 43430b0*), plus the regulatory database that
  # networking.wireless adds. Not mkDefault: any plain definition (that
  # wireless-regdb one) would silently drop it.
  hardware.firmware = [ pkgs.raspberrypiWirelessFirmware ];

  # The mainline kernel's Zero 2 W tree (arch/arm64/boot/dts/broadcom/
  # bcm2837-rpi-zero-2-w.dts), named explicitly in extlinux.conf (FDT) so U-Boot's
  # own guess does not matter; only that tree is copied to /boot.
  hardware.deviceTree = {
    enable = true;
    filter = "bcm2837-rpi-zero-2-w.dtb";
    name = "broadcom/bcm2837-rpi-zero-2-w.dtb";
  };

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
    # U-Boot looks for /boot/extlinux/extlinux.conf only on the partitions flagged
    # bootable once any is (its bootstd test `bootdev_test_bootable`), and that file
    # is on the root partition. sd-image.nix flags the root partition; a nixpkgs PR
    # (#477779, closed) would have flagged the FAT one. Pinned here, so the boot
    # does not depend on that default. Runs before the image is compressed, with
    # sd-image.nix's util-linux.
    postBuildCommands = ''
      sfdisk --no-reread --no-tell-kernel --activate "$img" 2
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
    mdns = {
      enable = true;
      interfaces = [ config.services.moat.wifi.interface ];
    };
  };
}

# The moat binary (the workspace's root package, its default member: the load
# generator `moat-bench` is another package and stays out of the image). Tests: only
# the library's unit tests run here (`cargo test --lib`);
# the end-to-end tests in tests/ need mosquitto, openssl, nft and network namespaces,
# which the Nix build sandbox does not have. When cross-compiling, nixpkgs skips the
# check phase on its own (the build platform cannot run the binaries).
{
  lib,
  rustPlatform,
}:
let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "moat";
  inherit (cargoToml.workspace.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../crates
      # The policy's unit tests check the roles' grants against this page
      # (include_str!); without it the check phase does not compile.
      ../docs/manifest.md
      (lib.fileset.maybeMissing ../tests)
      (lib.fileset.maybeMissing ../examples)
      (lib.fileset.maybeMissing ../benches)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  cargoTestFlags = [ "--lib" ];

  meta = {
    description = cargoToml.package.description;
    mainProgram = "moat";
    license = with lib.licenses; [
      mit
      asl20
    ];
    platforms = lib.platforms.linux;
  };
}

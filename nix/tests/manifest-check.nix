# The build-time manifest check (../check-manifest.nix): the template's manifest,
# whose password_hash is still the "REPLACE: ..." placeholder, must fail the build
# with moat's line/column error; a manifest with a real argon2id hash must pass and
# come out unchanged. testBuildFailure (nixpkgs pkgs/build-support/testers) turns
# the expected failure into a derivation holding its log and exit code.
{ pkgs }:
let
  moat = pkgs.callPackage ../package.nix { };
  checkManifest = pkgs.callPackage ../check-manifest.nix { inherit moat; };

  placeholder = checkManifest ../../templates/default/moat.yaml;

  valid = pkgs.runCommand "moat-valid.yaml" { nativeBuildInputs = [ moat ]; } ''
    hash=$(printf '%s' manifest-check-password | moat passwd tester --stdin | grep -o '\$argon2id\$[^[:space:]"]*' | head -n 1)
    test -n "$hash"
    cat > $out <<YAML
    version: 1
    broker:
      hostnames: [moat.home.arpa]
    users:
      tester:
        password_hash: "$hash"
        publish: ["test/#"]
    YAML
  '';
in
pkgs.runCommand "moat-manifest-check"
  {
    failed = pkgs.testers.testBuildFailure placeholder;
    checked = checkManifest valid;
  }
  ''
    (( 1 == "$(cat "$failed/testBuildFailure.exit")" ))
    grep -F 'this is not a password hash' "$failed/testBuildFailure.log"
    grep -F 'line 20 column 20' "$failed/testBuildFailure.log"
    cmp ${valid} "$checked"
    touch $out
  ''

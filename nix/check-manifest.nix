# A declared manifest, validated at build time by `moat check` built for the build
# platform: a bad manifest (a placeholder hash, a typo, an unknown role) fails
# `nix build` with moat's line/column error, never a boot. The result is the
# manifest itself, byte for byte; depending on it is what makes the check run.
{
  lib,
  runCommand,
  moat,
}:
manifest:
runCommand "moat-manifest-checked.yaml" { } ''
  ${lib.getExe moat} --manifest ${manifest} check >&2
  cp ${manifest} $out
''

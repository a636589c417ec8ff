// Package packaging holds what installs patchagent on a node; it has no code
// of its own, only its tests.
//
//   - nfpm.yaml: the deb and rpm (`make package`, nfpm v2.48.0): the static
//     binary, the systemd units (systemd/; systemd 239 or newer), the config
//     template /usr/share/patchagent/config.yaml (config.yaml, app.name left
//     empty; neither package ships /etc/patchagent/config.yaml, the
//     operator's file, which postinstall creates 0600 root when absent and
//     no removal touches), the man page (man/patchagent.8), the bash and zsh
//     completions (`patchagent completion`, run by `make package`),
//     copyright, changelog.yml and lintian-overrides.
//   - version.sh: the package version, from the newest changelog release and
//     git describe: <release>~git<N>.g<hash> before v<release> is tagged
//     (sorts below the release), <release>+<N>.g<hash> after it.
//   - scripts/: the maintainer scripts, POSIX sh, shared by deb and rpm
//     (posttrans.sh is the rpm's alone). The daemon is enabled (not started)
//     on first install only when systemd is 239 or newer and the config
//     passes check-config, so a fresh install with app.name unset enables
//     nothing; upgrades try-restart it; removal records which units were
//     enabled (/var/lib/patchagent/enabled-units), for a reinstall to enable
//     them again, then stops and disables both; only a deb purge deletes
//     /var/lib/patchagent and the config. Every systemctl call is skipped
//     when /run/systemd/system is missing; PATCHAGENT_SYSTEMD_DIR replaces
//     that path for the tests only.
//   - distributor/: the SSM Distributor package (`make distributor`): a Go
//     generator writing one zip per format/arch (install.sh, uninstall.sh,
//     the package) and manifest.json into dist/distributor/, for the
//     platforms with systemd 239 or newer only.
//
// Tests: scripts_test.go runs every script against stub systemctl, dpkg and
// rpm (and the real check-config); systemd_test.go verifies the units;
// version_test.go runs version.sh through a release in a git repository of
// its own; man_test.go checks that the man page renders
// (cmd/patchagent/man_test.go checks it against the CLI's command table);
// package_test.go (build tag integration) builds the packages and inspects
// them with dpkg-deb, rpm and lintian, runs check-config on the shipped
// config and checks the Distributor output; rpmroot_test.go (integration,
// root) installs, edits, erases, reinstalls and upgrades the rpm in a
// scratch rpm --root.
package packaging

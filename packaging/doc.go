// Package packaging holds what installs patchagent on a node; it has no code
// of its own, only its tests.
//
//   - nfpm.yaml: the deb and rpm (`make package`, nfpm v2.48.0): the static
//     binary, the systemd units (systemd/), /etc/patchagent/config.yaml
//     (config.yaml: a conffile, 0600 root, app.name left empty), the man page
//     (man/patchagent.8), the bash and zsh completions (`patchagent
//     completion`, run by `make package`), copyright, changelog.yml and
//     lintian-overrides.
//   - version.sh: the package version, from git describe.
//   - scripts/: the maintainer scripts, POSIX sh, shared by deb and rpm. The
//     daemon is enabled (not started) on first install only when the config
//     passes check-config, so a fresh install with app.name unset enables
//     nothing; upgrades try-restart it; removal stops and disables both
//     units; only a deb purge deletes /var/lib/patchagent. Every systemctl
//     call is skipped when /run/systemd/system is missing;
//     PATCHAGENT_SYSTEMD_DIR replaces that path for the tests only.
//   - distributor/: the SSM Distributor package (`make distributor`): a Go
//     generator writing one zip per format/arch (install.sh, uninstall.sh,
//     the package) and manifest.json into dist/distributor/.
//
// Tests: scripts_test.go runs every script against stub systemctl, dpkg and
// rpm; systemd_test.go verifies the units; man_test.go checks that the man
// page renders (cmd/patchagent/man_test.go checks it against the CLI's
// command table); package_test.go (build tag integration) builds the
// packages and inspects them with dpkg-deb, rpm and lintian, runs
// check-config on the shipped config and checks the Distributor output.
package packaging

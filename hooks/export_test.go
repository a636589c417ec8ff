package hooks

// Internals for the external tests (package hooks_test, which may import
// hookstest).
var (
	FindPM2In = func(configured string, search, nodeDirs []string) (string, string, error) {
		return findPM2(pathProbe{}, configured, search, nodeDirs)
	}
	PidAlive = pidAlive
	// ReadProcIn is PM2.Proc with the procfs mount point given.
	ReadProcIn = readProc
)

// pm2's RPC framing, for the fake pm2 daemon of the tests.
var (
	EncodeAMP = encodeAMP
	ReadAMP   = readAMP
)

// TreeHash describes a tree for before/after comparisons (snapshot_test.go).
var TreeHash = treeHash

// InstallArgs is the argv of the install UpgradeMajor runs, for the tests
// that install an app with npm's own flags.
func (n *NPM) InstallArgs() []string { return n.reifyArgs("install") }

// Verify is verify without the manifest, for the tests that check a
// snapshot is intact.
func (s Snapshot) Verify() error {
	_, err := s.verify()
	return err
}

package hooks

// Internals for the external tests (package hooks_test, which may import
// hookstest).
var (
	FindPM2In = findPM2
	PidAlive  = pidAlive
)

// pm2's RPC framing, for the fake pm2 daemon of the tests.
var (
	EncodeAMP = encodeAMP
	ReadAMP   = readAMP
)

// TreeHash describes a tree for before/after comparisons (snapshot_test.go).
var TreeHash = treeHash

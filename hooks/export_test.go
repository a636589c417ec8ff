package hooks

// Internals for the external tests (package hooks_test, which may import
// hookstest).
var (
	FindPM2In = findPM2
	PidAlive  = pidAlive
)
